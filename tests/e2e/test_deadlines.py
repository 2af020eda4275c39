"""Envoy's route timeout while the filter holds an error response for its object.

The upstream answers 404 at once and streams its body slowly (three chunks 1.5 s apart); the
error service needs 2 s for the 404 page; the route `/timed/` has Envoy's `timeout: 1s`.
Envoy's own 504 would go to the client past every filter (its direct local reply), so the
filter answers a little before it, as Envoy would: a 504 made by the proxy, decided by the
policy (here its inline 504 page). The dynamic module reads Envoy's timeout from the request
(`x-envoy-expected-rq-timeout-ms`); the wasm build is told it by the policy's
`routeTimeoutsMs` (by Envoy route name)."""
import threading
import time

import pytest


SLOW_404 = "status/404?chunked=1&bytes=30&chunk_bytes=10&chunk_delay_ms=1500"
# About the fetch on a request's path: the cache is never prewarmed here (test_ready.py
# covers prewarm, refresh and stale copies).
SVC = {"cluster": "error_pages", "authority": "errors.internal", "timeoutMs": 3000, "prewarm": False}
PAGE_404 = {"matchResponseCodes": ["404"], "path": "/e/404.html"}
PAGE_504 = {"matchResponseCodes": ["504"], "source": "proxy", "body": "gateway page {{status}} after {{originalStatus}} ({{codeDetails}})"}
ENVOYS_PAGE = b"gateway page 504 after 404 (response_timeout)"


def policy(*rules, route_timeouts={"timed-route": 1000}):
    p = {"errorService": SVC, "defaultCustomErrorResponsePolicy": {"errorResponseRules": list(rules)}}
    if route_timeouts:
        p["routeTimeoutsMs"] = route_timeouts
    return p


def in_background(fn):
    """Runs `fn` on a thread; returns a function that joins it and gives its result."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return lambda: (t.join(15), out[0])[1]


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@pytest.mark.one_worker
def test_the_leading_request_gets_the_policys_504_not_envoys(start_envoy, errors):
    errors.pages["/e/404.html"] = {"body": "the 404 page", "delay_ms": 2000}
    e = start_envoy(policy(PAGE_404, PAGE_504))
    r = e.request("/timed/" + SLOW_404)
    assert (r.status, r.body) == (504, ENVOYS_PAGE), r
    line = e.wait_access_line("cause=response_timeout")  # (the route rewrote the path)
    assert "code=504" in line, line
    assert "original=404 served=504 outcome=inline rule=defaultCustomErrorResponsePolicy.errorResponseRules[1] cause=response_timeout" in line, line
    assert "upstream request timeout" not in line
    assert e.counter("deadline", 1) == 1
    assert "panicked" not in e.log_text()


@pytest.mark.one_worker
def test_without_a_rule_for_envoys_504_envoys_own_reply_stands(start_envoy, errors):
    errors.pages["/e/404.html"] = {"body": "the 404 page", "delay_ms": 2000}
    e = start_envoy(policy(PAGE_404))
    r = e.request("/timed/" + SLOW_404)
    assert (r.status, r.body) == (504, b"upstream request timeout"), r
    assert e.counter("deadline", 0) == 0


@pytest.mark.one_worker
def test_a_waiting_request_gets_the_policys_504_and_the_leader_its_page(start_envoy, errors):
    errors.pages["/e/404.html"] = {"body": "the 404 page", "delay_ms": 2000}
    e = start_envoy(policy(PAGE_404, PAGE_504))
    # The leader is on a route without a timeout; the request waiting on its fetch is not.
    leader = in_background(lambda: e.request("/" + SLOW_404))
    wait_for(lambda: errors.requests_to("/e/404.html"))
    waiter = e.request("/timed/" + SLOW_404)
    assert (waiter.status, waiter.body) == (504, ENVOYS_PAGE), waiter
    r = leader()
    assert (r.status, r.body) == (404, b"the 404 page"), r
    assert len(errors.requests_to("/e/404.html")) == 1, "the waiter leaving costs no fetch"
    line = e.wait_access_line("cause=response_timeout")
    assert "code=504" in line and "served=504 outcome=inline" in line, line
    line = e.wait_access_line("outcome=fetched")
    assert "code=404" in line and "original=404 served=404" in line, line


@pytest.mark.one_worker
def test_when_the_leader_is_answered_early_its_fetch_goes_on_for_the_waiter_and_the_cache(start_envoy, errors):
    errors.pages["/e/404.html"] = {"body": "the 404 page", "delay_ms": 2000}
    e = start_envoy(policy(PAGE_404, PAGE_504))
    leader = in_background(lambda: e.request("/timed/" + SLOW_404))
    wait_for(lambda: errors.requests_to("/e/404.html"))
    waiter = in_background(lambda: e.request("/" + SLOW_404))
    r = leader()
    assert (r.status, r.body) == (504, ENVOYS_PAGE), r
    r = waiter()
    assert (r.status, r.body) == (404, b"the 404 page"), r
    # Envoy cancelled the leader's call with it: the fetch was asked again at once, from a
    # context that stays (the waiter's request; the root context in the wasm build).
    assert len(errors.requests_to("/e/404.html")) == 2
    r = e.request("/status/404")
    assert (r.status, r.body) == (404, b"the 404 page"), r
    assert len(errors.requests_to("/e/404.html")) == 2, "served from the cache"
    assert "outcome=cache" in e.wait_access_line("outcome=cache")


@pytest.mark.one_worker
@pytest.mark.wasm_only(reason="a call from the proxy-wasm root context outlives requests; the dynamic module's calls go with theirs")
def test_a_fetch_nobody_waits_for_any_more_still_fills_the_cache(start_envoy, errors):
    errors.pages["/e/404.html"] = {"body": "the 404 page", "delay_ms": 2000}
    e = start_envoy(policy(PAGE_404, PAGE_504))
    r = e.request("/timed/" + SLOW_404)
    assert (r.status, r.body) == (504, ENVOYS_PAGE), r
    wait_for(lambda: e.counter("fetched", 1) == 1, timeout=6)
    r = e.request("/timed/" + SLOW_404)
    assert (r.status, r.body) == (404, b"the 404 page"), r
    assert len(errors.requests_to("/e/404.html")) == 2


@pytest.mark.one_worker
def test_an_object_for_envoys_504_is_served_from_the_cache(start_envoy, errors):
    errors.pages["/e/404.html"] = {"body": "the 404 page", "delay_ms": 2000}
    errors.pages["/e/504.html"] = {"body": "the branded 504 page"}
    gateway = {"matchResponseCodes": ["504"], "path": "/e/504.html", "overrideResponseCode": 503}
    e = start_envoy(policy(PAGE_404, gateway))
    assert e.request("/status/504").body == b"the branded 504 page"  # fills the cache
    r = e.request("/timed/" + SLOW_404)
    assert (r.status, r.body) == (503, b"the branded 504 page"), r
    line = e.wait_access_line("cause=response_timeout")
    assert "original=404 served=503 outcome=cache" in line, line


@pytest.mark.one_worker
@pytest.mark.native_only(reason="the dynamic module reads Envoy's route timeout itself")
def test_the_dynamic_module_needs_no_route_timeout_in_the_policy(start_envoy, errors):
    errors.pages["/e/404.html"] = {"body": "the 404 page", "delay_ms": 2000}
    e = start_envoy(policy(PAGE_404, PAGE_504, route_timeouts=None))
    r = e.request("/timed/" + SLOW_404)
    assert (r.status, r.body) == (504, ENVOYS_PAGE), r


@pytest.mark.one_worker
@pytest.mark.wasm_only(reason="proxy-wasm hides the request headers, and with them Envoy's timeout, after the request phase")
def test_without_route_timeouts_the_wasm_build_cannot_answer_before_envoy(start_envoy, errors):
    errors.pages["/e/404.html"] = {"body": "the 404 page", "delay_ms": 2000}
    e = start_envoy(policy(PAGE_404, PAGE_504, route_timeouts=None))
    r = e.request("/timed/" + SLOW_404)
    assert (r.status, r.body) == (504, b"upstream request timeout"), r
