"""Beyond Google Cloud's feature: cache, negotiation, templates, {status}, passthrough,
headers, source, counters and access-log fields, in the real Envoy."""
import pytest

import json
import time

# About the fetch on a request's path: the cache is never prewarmed here (test_ready.py
# covers prewarm, refresh and stale copies).
SVC = {"cluster": "error_pages", "authority": "errors.internal", "timeoutMs": 500, "cacheTtlSeconds": 300, "prewarm": False}


def policy(*rules, svc=SVC):
    return {"errorService": svc, "defaultCustomErrorResponsePolicy": {"errorResponseRules": list(rules)}}


@pytest.mark.one_worker
def test_second_identical_error_is_served_from_cache(start_envoy, errors):
    errors.pages["/e/404.html"] = {"body": "cached page"}
    e = start_envoy(policy({"matchResponseCodes": ["4xx"], "path": "/e/{status}.html"}))
    for _ in range(3):
        assert e.request("/status/404").body == b"cached page"
    assert len(errors.requests_to("/e/404.html")) == 1
    # {status} makes another object: its own fetch (error service 404 -> fallback, not cached)
    assert b"410 Gone" in e.request("/status/410").body
    assert len(errors.requests_to("/e/410.html")) == 1
    assert e.counter("intercepted", 4) == 4
    assert e.counter("fetched", 1) == 1
    assert e.counter("cache_hit", 2) == 2
    assert e.counter("fetch_failed.status", 1) == 1
    assert e.counter("fallback", 1) == 1
    line = e.wait_access_line("GET /status/410")
    assert "code=410" in line and "original=410 served=410 outcome=fallback" in line, line
    line = e.wait_access_line("outcome=cache")
    assert "rule=defaultCustomErrorResponsePolicy.errorResponseRules[0]" in line


@pytest.mark.one_worker
def test_expiry_refetches_and_no_store_is_never_cached(start_envoy, errors):
    errors.pages["/short.html"] = {"body": "short-lived", "headers": [("cache-control", "public, max-age=1")]}
    errors.pages["/nostore.html"] = {"body": "fresh each time", "headers": [("cache-control", "no-store")]}
    e = start_envoy(policy({"matchResponseCodes": ["404"], "path": "/short.html"},
                           {"matchResponseCodes": ["410"], "path": "/nostore.html"}))
    e.request("/status/404")
    e.request("/status/404")
    assert len(errors.requests_to("/short.html")) == 1
    time.sleep(1.1)  # the object's own max-age=1 must run out: time passing is what is tested
    e.request("/status/404")
    assert len(errors.requests_to("/short.html")) == 2
    for _ in range(3):
        r = e.request("/status/410")
        assert r.body == b"fresh each time" and r.header("cache-control") == "no-store"
    assert len(errors.requests_to("/nostore.html")) == 3


def test_cache_ttl_zero_disables_cache(start_envoy, errors):
    errors.pages["/e.html"] = {"body": "p"}
    e = start_envoy(policy({"matchResponseCodes": ["404"], "path": "/e.html"}, svc=dict(SVC, cacheTtlSeconds=0)))
    e.request("/status/404")
    e.request("/status/404")
    assert len(errors.requests_to("/e.html")) == 2


NEGOTIATED = {"matchResponseCodes": ["404"], "path": "/e/404.html",
              "variants": [{"contentType": "application/json", "path": "/e/404.json"},
                           {"contentType": "text/plain", "body": "not found: {{path}}"}]}


@pytest.mark.one_worker
def test_json_for_api_clients_html_for_browsers(start_envoy, errors):
    errors.pages["/e/404.html"] = {"body": "<h1>html</h1>"}
    errors.pages["/e/404.json"] = {"body": '{"error":"json"}', "ct": "application/json"}
    e = start_envoy(policy(NEGOTIATED))
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    r = e.request("/status/404", headers={"accept": browser})
    assert (r.body, r.header("content-type")) == (b"<h1>html</h1>", "text/html; charset=utf-8")
    r = e.request("/status/404", headers={"accept": "application/json"})
    assert (r.body, r.header("content-type")) == (b'{"error":"json"}', "application/json")
    r = e.request("/status/404", headers={"accept": "text/plain"})
    assert (r.body, r.header("content-type")) == (b"not found: /status/404", "text/plain")
    r = e.request("/status/404")  # no Accept: the rule's own object
    assert r.body == b"<h1>html</h1>"
    # the chosen type reaches the error service and separates cache entries
    assert [c["headers"]["x-format"] for c in errors.requests_to("/e/404.html")] == ["text/html"]
    assert [c["headers"]["x-format"] for c in errors.requests_to("/e/404.json")] == ["application/json"]
    e.request("/status/404", headers={"accept": "application/json"})
    assert len(errors.requests_to("/e/404.json")) == 1


def test_hostile_path_is_escaped(start_envoy, errors):
    errors.pages["/t.html"] = {"body": "<p>you asked for {{path}} on {{host}}</p>"}
    e = start_envoy(policy(
        {"matchResponseCodes": ["404"], "path": "/t.html", "template": True},
        {"matchResponseCodes": ["400-403"], "body": '{"path":"{{path}}","status":{{status}},"method":"{{method}}"}', "contentType": "application/json"},
        {"matchResponseCodes": ["410"], "path": "/t.html"}))  # template off: served verbatim
    # (Envoy itself refuses markup in the host with a 400, so the path is the vector.)
    hostile = "/status/404/<script>alert('x')</script>\"&"
    r = e.request(hostile, host="shop.example")
    assert r.status == 404, r
    assert b"<script>" not in r.body
    assert r.body == (b"<p>you asked for /status/404/&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"
                      b" on shop.example</p>")
    r = e.request("/status/403/\"}<x>\\")
    assert json.loads(r.body) == {"path": "/status/403/\"}<x>\\", "status": 403, "method": "GET"}
    assert b"<x>" not in r.body
    assert e.request("/status/410").body == b"<p>you asked for {{path}} on {{host}}</p>"


def test_passthrough_stops_fall_through(start_envoy, errors):
    p = policy({"matchResponseCodes": ["4xx"], "body": "proxy-wide page"})
    p["hostRules"] = [{"hosts": ["api.test"], "pathMatcher": "api"}]
    p["pathMatchers"] = [{"name": "api", "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404", "409"], "passthrough": True}]}}]
    e = start_envoy(p)
    r = e.request("/status/404?ct=application/json", host="api.test")
    assert r.status == 404 and b"UPSTREAM-ERROR-BODY" in r.body and r.header("content-type") == "application/json"
    # twin: a code the passthrough rule does not list still falls through to the proxy level
    assert e.request("/status/400", host="api.test").body == b"proxy-wide page"
    assert e.counter("passthrough", 1) == 1
    line = e.wait_access_line("outcome=passthrough")
    assert "rule=pathMatchers[0].defaultCustomErrorResponsePolicy.errorResponseRules[0]" in line


def test_headers_set_on_replacement(start_envoy, errors):
    e = start_envoy(policy({"matchResponseCodes": ["503"], "body": "maintenance", "overrideResponseCode": 200,
                            "headers": {"retry-after": "120", "cache-control": "no-store", "x-maintenance": "on"}}))
    r = e.request("/status/503")
    assert r.status == 200 and r.body == b"maintenance"
    assert r.header("retry-after") == "120" and r.header("x-maintenance") == "on" and r.header("cache-control") == "no-store"
    line = e.wait_access_line("GET /status/503")
    assert "code=200" in line and "original=503 served=200 outcome=inline" in line, line


def test_source_proxy_versus_upstream(start_envoy, errors):
    e = start_envoy(policy({"matchResponseCodes": ["503"], "body": "made by the proxy: {{codeDetails}}", "contentType": "text/plain", "source": "proxy"},
                           {"matchResponseCodes": ["503"], "body": "made by a backend ({{source}})", "contentType": "text/plain", "source": "upstream"}))
    r = e.request("/dead")
    assert r.status == 503 and r.body.startswith(b"made by the proxy: upstream_reset_before_response_started"), r
    r = e.request("/status/503")
    assert r.status == 503 and r.body == b"made by a backend (upstream)"
    # a proxy-only rule leaves backend errors alone
    e2 = start_envoy(policy({"matchResponseCodes": ["5xx"], "body": "proxy only", "source": "proxy"}))
    assert b"UPSTREAM-ERROR-BODY" in e2.request("/status/503").body
    assert e2.request("/dead").body == b"proxy only"


@pytest.mark.one_worker
def test_concurrent_misses_share_one_fetch(start_envoy, errors):
    import threading
    errors.pages["/slow.html"] = {"body": "shared page", "delay_ms": 400}
    e = start_envoy(policy({"matchResponseCodes": ["503"], "path": "/slow.html"}))
    results = []

    def one():
        r = e.request("/status/503")
        results.append((r.status, r.body))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(503, b"shared page")] * 12
    assert len(errors.requests_to("/slow.html")) == 1  # one fetch, not twelve
    assert e.counter("fetched", 1) == 1
    assert e.counter("cache_hit", 11) == 11
    assert e.counter("fallback", 0) == 0


@pytest.mark.one_worker
def test_waiters_get_the_page_when_the_fetching_request_dies(start_envoy, errors):
    import socket
    import threading
    errors.pages["/slow.html"] = {"body": "late page", "delay_ms": 1500}
    e = start_envoy(policy({"matchResponseCodes": ["503"], "path": "/slow.html"}, svc=dict(SVC, timeoutMs=3000)))
    leader = socket.create_connection(("127.0.0.1", e.port))
    leader.sendall(b"GET /status/503 HTTP/1.1\r\nhost: www.test\r\n\r\n")
    deadline = time.monotonic() + 5
    while not errors.requests_to("/slow.html") and time.monotonic() < deadline:
        time.sleep(0.01)  # poll until the leader's fetch is in flight
    results = []
    threads = [threading.Thread(target=lambda: results.append(e.request("/status/503"))) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # let the waiters reach Envoy and queue on the flight
    leader.close()
    for t in threads:
        t.join()
    # Envoy cancelled the leader's call with it: the fetch is asked again from a context that
    # stays (the proxy-wasm root; natively, the first waiter), and the waiters get the page.
    assert [(r.status, r.body) for r in results] == [(503, b"late page")] * 3, results
    assert len(errors.requests_to("/slow.html")) == 2
    assert "panicked" not in e.log_text()
