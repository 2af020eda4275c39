"""Pages ready before the error: the policy's objects fetched when the configuration goes live
(prewarm), fetched again before they expire (refresh), and served stale while the error
service is down; the built-in page is never a success. Each case is listed in docs/faults.md.

Prewarm and refresh run where calls outlive requests: each proxy-wasm root context (one per
VM), and the dynamic module's main thread (once per configuration, for every worker thread;
docs/native.md)."""

import re
import time

from harness import BUILD, CONCURRENCY

WORKERS = int(CONCURRENCY)
# Who prewarms each object: Envoy runs the wasm module's root context on its main thread as
# well as on each worker (measured: one worker, five objects, ten prewarm fetches), each of
# them for its own cache; the dynamic module's main thread once, for all worker threads.
VMS = 1 if BUILD == "native" else WORKERS + 1
SVC = {"cluster": "error_pages", "authority": "errors.internal", "timeoutMs": 500}
PAGE_404 = {"matchResponseCodes": ["404"], "path": "/e/404.html"}
PAGE_5XX = {"matchResponseCodes": ["5xx"], "path": "/e/{status}.html"}


def policy(*rules, **svc):
    return {"errorService": dict(SVC, **svc), "defaultCustomErrorResponsePolicy": {"errorResponseRules": list(rules)}}


def serve_pages(errors, codes=(404, 500, 502, 503, 504)):
    for code in codes:
        errors.pages[f"/e/{code}.html"] = {"body": f"page {code}"}


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def outcome(e, path):
    line = e.wait_access_line(f" {path} ", timeout=20)
    return line.split(" outcome=")[1].split()[0], line


def test_the_first_error_after_start_is_served_with_no_fetch_on_its_path(start_envoy, errors):
    serve_pages(errors)
    e = start_envoy(policy(PAGE_404, PAGE_5XX, prewarmCodes=[500, 502, 503, 504]))
    assert e.counter("prewarmed", 5 * VMS, timeout=10) == 5 * VMS, "404 and the four 5xx pages, per VM"
    fetched = len(errors.requests)
    for path, status in (("/status/502?first", 502), ("/status/404?first", 404)):
        r = e.request(path)
        assert (r.status, r.body) == (status, f"page {status}".encode())
        served, line = outcome(e, path)
        assert served == "cache" and " cache=prewarmed" in line and "fetch_ms=" not in line, line
    assert len(errors.requests) == fetched, "the error service saw every fetch before the errors came"
    assert all(r["headers"].get("x-request-id") is None for r in errors.requests), "no request's facts in a prewarm"


def test_prewarm_off_fetches_on_the_first_errors_path(start_envoy, errors):
    serve_pages(errors)
    e = start_envoy(policy(PAGE_404, prewarm=False))
    assert e.counter("prewarmed", 0) == 0 and errors.requests == []
    assert e.request("/status/404?cold").body == b"page 404"
    served, line = outcome(e, "/status/404?cold")
    assert served == "fetched" and re.search(r" cache=miss fetch_ms=\d+( |$)", line), line


def warm(e, errors, paths):
    """Every worker can serve each path's object: prewarmed."""
    assert e.counter("prewarmed", len(paths) * VMS, timeout=10) == len(paths) * VMS


def test_an_error_service_outage_keeps_every_rule_on_its_own_page(start_envoy, errors):
    """TTL 2 s, the error service stopped after warm-up: for 30 s every rule still serves its
    own page (a stale copy), never the built-in one; the error service back: fresh again."""
    serve_pages(errors)
    e = start_envoy(policy(PAGE_404, PAGE_5XX, cacheTtlSeconds=2, prewarmCodes=[502]))
    warm(e, errors, ["/status/404", "/status/502"])
    errors.stop()
    end = time.monotonic() + 30
    n = 0
    while time.monotonic() < end:
        for status in (404, 502):
            r = e.request(f"/status/{status}?outage={n}")
            assert (r.status, r.body) == (status, f"page {status}".encode()), (n, r)
        n += 1
        time.sleep(0.25)  # pacing: about 240 errors over the 30 s
    served, line = outcome(e, f"/status/502?outage={n - 1}")
    assert served == "stale" and " cache=stale" in line, line
    assert e.counter("stale", 1) >= 1
    assert e.counter("fallback", 0) == 0
    errors.start_again()

    tries = iter(range(1000))

    def fresh_again():
        path = f"/status/404?back={next(tries)}"
        assert e.request(path).body == b"page 404"
        return outcome(e, path)[0] in ("cache", "fetched")

    wait_for(fresh_again, timeout=60, what="a fresh copy after the outage")


def test_envoys_route_timeout_during_a_cold_fetch_gets_the_504_rules_own_object(start_envoy, errors):
    """The 404 object may not be cached (so its fetch is on the request's path, 2 s), the
    route's timeout is 1 s: the filter answers in Envoy's place with the 504 rule's object,
    which was prewarmed."""
    errors.pages["/e/404.html"] = {"body": "the 404 page", "delay_ms": 2000, "headers": [("cache-control", "no-store")]}
    errors.pages["/e/504.html"] = {"body": "the policy's 504 page"}
    page_504 = {"matchResponseCodes": ["504"], "source": "proxy", "path": "/e/504.html"}
    p = policy(PAGE_404, page_504, timeoutMs=3000)
    p["routeTimeoutsMs"] = {"timed-route": 1000}
    e = start_envoy(p)
    wait_for(lambda: e.counter("prewarmed", 2 * VMS) == 2 * VMS, what="the prewarm")
    r = e.request("/timed/status/404?chunked=1&bytes=30&chunk_bytes=10&chunk_delay_ms=1500")
    assert (r.status, r.body) == (504, b"the policy's 504 page"), r
    line = e.wait_access_line("cause=response_timeout")
    assert "original=404 served=504 outcome=cache" in line, line


def test_an_error_service_never_up_never_turns_an_error_into_a_success(start_envoy, errors):
    """A maintenance rule served as 200: with nothing of the policy to serve, the built-in page
    goes out under the original status; a rule with an inline body still serves it as 200."""
    errors.stop()
    maintenance = {"matchResponseCodes": ["503"], "path": "/e/maintenance.html", "overrideResponseCode": 200}
    inline = {"matchResponseCodes": ["404"], "path": "/e/404.html", "overrideResponseCode": 200, "body": "inline page"}
    e = start_envoy(policy(maintenance, inline))
    r = e.request("/status/503?never")
    assert r.status == 503 and b"<h1>503 Service Unavailable</h1>" in r.body, r
    assert "no-store" not in r.headers.get("cache-control", [""])[0]
    assert "served=503 outcome=fallback" in outcome(e, "/status/503?never")[1]
    r = e.request("/status/404?never")
    assert (r.status, r.body) == (200, b"inline page"), r
    assert "served=200 outcome=fallback" in outcome(e, "/status/404?never")[1]


def many_objects(errors, codes):
    variants = [{"contentType": "application/json", "path": "/e/{status}.json"},
                {"contentType": "text/plain", "path": "/e/{status}.txt"}]
    for code in codes:
        for ext in ("html", "json", "txt"):
            errors.pages[f"/e/{code}.{ext}"] = {"body": f"{code} {ext}"}
    return {"matchResponseCodes": ["4xx", "5xx"], "path": "/e/{status}.html", "variants": variants}


def test_a_policy_naming_more_objects_than_the_cache_holds_prewarms_up_to_the_bound(start_envoy, errors):
    codes = list(range(400, 600))  # 200 codes, 3 variants each: 600 objects, 512 entries per cache
    e = start_envoy(policy(many_objects(errors, codes), prewarmCodes=codes))
    assert e.counter("prewarmed", 512 * VMS, timeout=30) == 512 * VMS
    settled = len(errors.requests)
    assert settled == 512 * VMS
    assert e.counter("prewarmed", 512 * VMS + 1, timeout=1.5) == 512 * VMS, "nothing more asked, nothing evicted"
    assert len(errors.requests) == settled
    log = e.log_text()
    assert log.count("more objects than the cache holds") == log.count("policy loaded"), "logged once per load"


def test_prewarm_does_not_storm_a_slow_error_service(start_envoy, errors):
    codes = list(range(400, 600))
    for code in codes:
        errors.pages[f"/e/{code}.html"] = {"body": f"{code}", "delay_ms": 300}
    # A timeout long enough that no fetch is abandoned while the service still works on it.
    start_envoy(policy({"matchResponseCodes": ["4xx", "5xx"], "path": "/e/{status}.html"},
                       prewarmCodes=codes, timeoutMs=10000))
    wait_for(lambda: len(errors.requests) >= 40, what="forty prewarm fetches")
    assert 1 <= errors.most_at_once <= 4 * VMS, errors.most_at_once


def test_an_object_a_request_fetched_is_kept_fresh_with_no_request_asking(start_envoy, errors):
    """Prewarm off, TTL 2 s: the first 404 fetches its page on its path; from then on the
    page is fetched again before it expires with no client asking (the wasm build's root
    context learns it; the dynamic module's worker hands it to the main thread, which shelves
    it for every worker and refreshes it)."""
    serve_pages(errors)
    e = start_envoy(policy(PAGE_404, prewarm=False, cacheTtlSeconds=2))
    assert e.request("/status/404?first").body == b"page 404"
    assert outcome(e, "/status/404?first")[0] == "fetched"
    wait_for(lambda: len(errors.requests_to("/e/404.html")) >= 3, timeout=10, what="two refreshes")
    assert e.counter("refreshed", 2, timeout=5) >= 2
    assert all(r["headers"].get("x-request-id") is None for r in errors.requests[1:]), "no request's facts in a refresh"
    assert e.request("/status/404?later").body == b"page 404"
    served, line = outcome(e, "/status/404?later")
    if BUILD == "native" or WORKERS == 1:
        # Any worker of the dynamic module takes the shelved copy; with two wasm VMs the
        # request may reach the one that never fetched it.
        assert served == "cache" and " cache=" in line and "fetch_ms=" not in line, line
