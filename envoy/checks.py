#!/usr/bin/env python3
"""The HTTP checks of the sample configuration, runnable against any stack that serves it:
the native test harness (tests/e2e/test_sample_config.py) and the docker-compose stack
(`python3 envoy/checks.py http://127.0.0.1:10000 http://127.0.0.1:9901`)."""

import http.client
import json
import re
import sys
import time
from urllib.parse import urlsplit


def request(base, path, host=None, headers=None):
    u = urlsplit(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    h = {"host": host or f"{u.hostname}:{u.port}"}
    h.update(headers or {})
    try:
        c.request("GET", path, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def counter(admin, name, at_least):
    """Counters reach Envoy's stats on the filter's 100 ms tick: poll up to 3 s. The wasm
    build's show as `wasmcustom.custom_error_pages.*`, the dynamic module's as
    `dynamicmodulescustom.custom_error_pages.*`."""
    deadline = time.monotonic() + 3
    while True:
        _, _, body = request(admin, "/stats")
        value = 0
        for line in body.decode().splitlines():
            key, _, v = line.partition(": ")
            if key.endswith("custom.custom_error_pages." + name) and v.strip().isdigit():
                value = int(v)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def run(base, admin):
    """Each check: (what, passed). Raises nothing; returns the list."""
    results = []

    def check(what, cond):
        results.append((what, bool(cond)))

    s, h, b = request(base, "/status/404")
    check("404 gets the branded page without the backend's cookie", s == 404 and b"We couldn't find that page" in b and "set-cookie" not in h)
    s, h, b = request(base, "/status/404", headers={"accept": "application/json"})
    check("404 for an API client is JSON", s == 404 and json.loads(b) == {"error": "not_found", "message": "No such resource."})
    s, h, b = request(base, "/status/500", headers={"x-request-id": "check-1"})
    check("500 page is a template with the request id", s == 500 and b"(500)" in b and b"check-1" in b)
    s, h, b = request(base, "/status/500", headers={"accept": "application/json", "x-request-id": "check-2"})
    check("500 as JSON from an inline variant", s == 500 and json.loads(b) == {"error": "unavailable", "status": 500, "requestId": "check-2"})
    s, h, b = request(base, "/dead")
    check("Envoy's own 503 gets the maintenance page and retry-after", s == 503 and b"We'll be right back" in b and h.get("retry-after") == "120")
    s, h, b = request(base, "/status/503")
    check("a backend's 503 gets the 5xx page", s == 503 and b"(503)" in b)
    s, h, b = request(base, "/status/404", host="shop.localhost")
    check("shop host: its own 404 page", s == 404 and b"no longer in the shop" in b)
    s, h, b = request(base, "/status/403", host="x.shop.localhost")
    check("wildcard host: /shop/{status}.html", s == 403 and b"Please sign in" in b)
    s, h, b = request(base, "/images/status/404", host="shop.localhost")
    check("path rule: placeholder image with status 200", s == 200 and h.get("content-type") == "image/svg+xml" and b.startswith(b"<svg"))
    s, h, b = request(base, "/status/418", host="shop.localhost")
    check("missing page on the error service: built-in fallback", s == 418 and b"418 Client Error" in b)
    s, h, b = request(base, "/status/404", host="api.localhost")
    check("api host: 4xx passes through", s == 404 and b"We couldn't find" not in b and b"no longer in the shop" not in b)
    s, h, b = request(base, "/status/503", host="api.localhost")
    check("api host: inline JSON 5xx", s == 503 and json.loads(b) == {"error": "unavailable", "status": 503, "path": "/status/503"})
    s, h, b = request(base, "/checkout", host="api.localhost")
    check("route rule by Envoy route name", s == 503 and b"Checkout is unavailable" in b)
    s, h, b = request(base, "/orders", headers={"x-request-id": "check-3"})
    check("route metadata selects the named policy orders", s == 503 and b"Orders are paused" in b and b"check-3" in b and h.get("retry-after") == "30")
    s, h, b = request(base, "/raw/status/500")
    check("filter switched off on a route: the backend's own error", s == 500 and b"backend error page" in b)
    if admin:
        check("counters: passthrough counted", counter(admin, "passthrough", 1) >= 1)
        check("counters: intercepted counted", counter(admin, "intercepted", 11) >= 11)
        check("per-rule counters are Prometheus labels (the sample's stats_tags)", rule_counted(admin, "api-4xx", "passthrough"))
    return results


def rule_counted(admin, rule, outcome):
    """`/stats/prometheus` shows the rule's count for the outcome as labels, either build's
    name (`custom_error_pages_decisions` or `envoy_dynamicmodulescustom_..._decisions`)."""
    wanted = re.compile(r'custom_error_pages_decisions\{rule="%s",outcome="%s"\} ([0-9]+)' % (re.escape(rule), outcome))
    deadline = time.monotonic() + 3
    while True:
        _, _, body = request(admin, "/stats/prometheus")
        found = [int(m.group(1)) for m in wanted.finditer(body.decode())]
        if (found and found[0] >= 1) or time.monotonic() > deadline:
            return bool(found) and found[0] >= 1
        time.sleep(0.05)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: checks.py BASE_URL [ADMIN_URL]")
    results = run(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    for what, ok in results:
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    sys.exit(0 if all(ok for _, ok in results) else 1)


if __name__ == "__main__":
    main()
