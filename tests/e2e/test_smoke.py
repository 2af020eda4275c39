"""The smallest end-to-end pass: fetch, cache, inline body, a proxy-made error, HEAD."""

import pytest


def basic_policy():
    return {
        "errorService": {"cluster": "error_pages", "authority": "errors.internal", "timeoutMs": 500, "prewarm": False},
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"matchResponseCodes": ["404"], "path": "/errors/404.html"},
            {"matchResponseCodes": ["5xx"], "path": "/errors/5xx.html", "overrideResponseCode": 503},
            {"matchResponseCodes": ["418"], "body": "<p>teapot {{path}}</p>"},
        ]},
    }


@pytest.mark.one_worker
def test_fetch_then_cache(start_envoy, errors, upstream):
    errors.pages["/errors/404.html"] = {"body": "<h1>branded 404</h1>"}
    e = start_envoy(basic_policy())
    r = e.request("/status/404")
    assert r.status == 404, r
    assert r.body == b"<h1>branded 404</h1>", r
    assert r.header("set-cookie") is None
    r = e.request("/status/404")
    assert r.body == b"<h1>branded 404</h1>", r
    assert len(errors.requests_to("/errors/404.html")) == 1
    r = e.request("/status/418")
    assert r.status == 418 and r.body == b"<p>teapot /status/418</p>", r
    r = e.request("/dead")
    assert r.status == 503, r
    r = e.request("/hello")
    assert r.status == 200 and r.body == b"hello from upstream"
    r = e.request("/status/404?empty=1")
    assert r.status == 404 and r.body == b"<h1>branded 404</h1>", r
    r = e.request("/status/404", method="HEAD")
    assert r.status == 404 and r.body == b"", r
    line = e.wait_access_line("HEAD /status/404")
    assert "code=404" in line and "original=404 served=404 outcome=cache" in line, line
    assert "original=404 served=404 outcome=fetched" in e.wait_access_line("GET /status/404 ")
    assert e.counter("intercepted", 6) == 6  # 404 x2, 418, the dead route's 503, empty 404, HEAD
    assert e.counter("fetched", 1) == 1  # the 404 page once; the rest from the cache
    assert e.counter("inline", 1) == 1
    # The dead route's 503: the error service has no 5xx page, so the built-in one.
    assert e.counter("fetch_failed.status", 1) == 1 and e.counter("fallback", 1) == 1
    assert "served=503 outcome=fallback" in e.wait_access_line("GET /dead")
