"""The core filter in the real Envoy 1.40, over real sockets: levels and precedence, what is
served, what never leaks."""

import time

import pytest

# About the fetch on a request's path: the cache is never prewarmed here (test_ready.py
# covers prewarm, refresh and stale copies).
SVC = {"cluster": "error_pages", "authority": "errors.internal", "timeoutMs": 400, "prewarm": False}


def pages(errors, **paths):
    for path, body in paths.items():
        errors.pages["/" + path.replace("__", "/").replace("_dot_", ".")] = {"body": body}


# ---------- levels and precedence ----------

LEVELS = {
    "errorService": SVC,
    "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["4xx"], "path": "/proxy/4xx.html"},
        {"matchResponseCodes": ["5xx"], "path": "/proxy/5xx.html"},
    ]},
    "hostRules": [
        {"hosts": ["shop.example.com", "*.example.org"], "pathMatcher": "shop"},
        {"hosts": ["api.example.com"], "pathMatcher": "api"},
    ],
    "pathMatchers": [
        {"name": "shop",
         "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
             {"matchResponseCodes": ["404"], "path": "/shop/{status}.html"},
             {"matchResponseCodes": ["502-504"], "path": "/shop/50x.html"}]},
         "pathRules": [
             {"paths": ["/images/*", "/logo.png"], "customErrorResponsePolicy": {"errorResponseRules": [
                 {"matchResponseCodes": ["404"], "path": "/images/missing.svg", "overrideResponseCode": 200}]}},
             {"paths": ["/gone/*"], "customErrorResponsePolicy": {"errorResponseRules": [
                 {"matchResponseCodes": ["404"], "body": "gone for good", "contentType": "text/plain", "overrideResponseCode": 410}]}}]},
        {"name": "api",
         "routeRules": [
             {"priority": 5, "matchRules": [{"prefixMatch": "/status/"}], "customErrorResponsePolicy": {"errorResponseRules": [
                 {"matchResponseCodes": ["5xx"], "body": "{\"error\":\"api\",\"status\":{{status}}}", "contentType": "application/json"}]}},
             {"priority": 1, "matchRules": [
                 {"prefixMatch": "/status/", "headerMatches": [{"headerName": "x-beta", "exactMatch": "yes"}]},
                 {"prefixMatch": "/status/", "queryParameterMatches": [{"name": "beta", "presentMatch": True}]}],
              "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "body": "beta api error", "contentType": "text/plain"}]}},
             {"priority": 0, "matchRules": [{"routeName": "checkout"}], "customErrorResponsePolicy": {"errorResponseRules": [
                 {"matchResponseCodes": ["5xx"], "body": "checkout is down", "contentType": "text/plain"}]}},
         ]},
    ],
}


@pytest.fixture
def levels(start_envoy, errors):
    for p in ["/proxy/4xx.html", "/proxy/5xx.html", "/shop/404.html", "/shop/50x.html", "/images/missing.svg"]:
        errors.pages[p] = {"body": f"page {p}", "ct": "image/svg+xml" if p.endswith(".svg") else "text/html"}
    return start_envoy(LEVELS)


def test_proxy_level_for_hosts_no_rule_names(levels):
    r = levels.request("/status/404", host="unknown.net")
    assert (r.status, r.body) == (404, b"page /proxy/4xx.html")
    r = levels.request("/status/502", host="unknown.net")
    assert (r.status, r.body) == (502, b"page /proxy/5xx.html")
    # no-match twin: a success passes untouched
    r = levels.request("/hello", host="unknown.net")
    assert (r.status, r.body) == (200, b"hello from upstream")


def test_host_level_and_per_code_fall_through(levels):
    r = levels.request("/status/404", host="shop.example.com")
    assert (r.status, r.body) == (404, b"page /shop/404.html")
    r = levels.request("/status/503", host="shop.example.com")
    assert (r.status, r.body) == (503, b"page /shop/50x.html")
    # the shop has no 403 or 500 rule: the proxy-wide policy decides
    r = levels.request("/status/403", host="shop.example.com")
    assert (r.status, r.body) == (403, b"page /proxy/4xx.html")
    r = levels.request("/status/500", host="shop.example.com")
    assert (r.status, r.body) == (500, b"page /proxy/5xx.html")


def test_host_wildcards_case_and_ports(levels):
    assert levels.request("/status/404", host="a.example.org").body == b"page /shop/404.html"
    assert levels.request("/status/404", host="SHOP.Example.com:10443").body == b"page /shop/404.html"
    # no-match twins: the apex of a wildcard, and a near miss
    assert levels.request("/status/404", host="example.org").body == b"page /proxy/4xx.html"
    assert levels.request("/status/404", host="shop.example.com.evil").body == b"page /proxy/4xx.html"


def test_path_rules_and_override_to_200_and_to_other_code(levels):
    r = levels.request("/images/status/404", host="shop.example.com")
    assert (r.status, r.body, r.header("content-type")) == (200, b"page /images/missing.svg", "image/svg+xml")
    r = levels.request("/logo.png/status/404", host="shop.example.com")  # not /logo.png exactly
    assert (r.status, r.body) == (404, b"page /shop/404.html")
    r = levels.request("/gone/status/404", host="shop.example.com")
    assert (r.status, r.body, r.header("content-type")) == (410, b"gone for good", "text/plain")
    # path rule has no 502 rule: the host's range decides
    r = levels.request("/images/status/502", host="shop.example.com")
    assert (r.status, r.body) == (502, b"page /shop/50x.html")


def test_route_rules_priority_header_query(levels):
    r = levels.request("/status/503", host="api.example.com")
    assert (r.status, r.body, r.header("content-type")) == (503, b'{"error":"api","status":503}', "application/json")
    r = levels.request("/status/503", host="api.example.com", headers={"x-beta": "yes"})
    assert r.body == b"beta api error"
    r = levels.request("/status/503", host="api.example.com", headers={"x-beta": "no"})
    assert r.body == b'{"error":"api","status":503}'
    r = levels.request("/status/503?beta", host="api.example.com")
    assert r.body == b"beta api error"
    # a 4xx has no route-level rule: proxy level
    assert levels.request("/status/404", host="api.example.com").body == b"page /proxy/4xx.html"


def test_route_rule_by_envoy_route_name(levels):
    r = levels.request("/checkout/status/502", host="api.example.com")
    assert (r.status, r.body) == (502, b"checkout is down")
    # no-match twin: same status on the route named "default"
    assert levels.request("/other/status/502", host="api.example.com").body == b"page /proxy/5xx.html"


# ---------- errors Envoy makes itself ----------

PROXY_POLICY = {
    "errorService": SVC,
    "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["503"], "path": "/down.html"},
        {"matchResponseCodes": ["504"], "body": "<h1>too slow</h1>"},
        {"matchResponseCodes": ["403"], "body": "<h1>not allowed</h1>", "overrideResponseCode": 404},
    ]},
}


def test_proxy_generated_errors_are_replaced(start_envoy, errors):
    errors.pages["/down.html"] = {"body": "<h1>backend down</h1>"}
    e = start_envoy(PROXY_POLICY)
    r = e.request("/dead")  # cluster with nothing listening: connect failure
    assert (r.status, r.body) == (503, b"<h1>backend down</h1>")
    assert b"upstream connect error" not in r.body
    r = e.request("/slow")  # route timeout 0.3 s, upstream answers after 1.5 s
    assert (r.status, r.body) == (504, b"<h1>too slow</h1>")
    r = e.request("/forbidden")  # a direct_response 403, overridden to 404
    assert (r.status, r.body) == (404, b"<h1>not allowed</h1>")
    line = e.wait_access_line("GET /dead")
    assert "code=503" in line and "original=503 served=503 outcome=fetched rule=defaultCustomErrorResponsePolicy.errorResponseRules[0]" in line, line


# ---------- what is never touched ----------

def test_head_gets_headers_only(start_envoy, errors):
    errors.pages["/down.html"] = {"body": "<h1>backend down</h1>"}
    e = start_envoy(PROXY_POLICY)
    r = e.request("/status/503", method="HEAD")
    assert r.status == 503 and r.body == b""
    assert r.header("content-type") == "text/html; charset=utf-8"
    r = e.request("/dead", method="HEAD")
    assert r.status == 503 and r.body == b""


def test_grpc_passes_through(start_envoy, errors):
    errors.pages["/down.html"] = {"body": "<h1>backend down</h1>"}
    e = start_envoy(PROXY_POLICY)
    r = e.request("/status/503", headers={"content-type": "application/grpc"})
    assert r.status == 503 and b"UPSTREAM-ERROR-BODY" in r.body
    r = e.request("/status/503?ct=application/grpc+proto")
    assert r.status == 503 and b"UPSTREAM-ERROR-BODY" in r.body
    # twin: the same error for a plain request is replaced
    assert e.request("/status/503").body == b"<h1>backend down</h1>"
    assert len(errors.requests_to("/down.html")) == 1


def test_no_header_leaks_either_way(start_envoy, errors, upstream):
    errors.pages["/e.html"] = {"body": "page", "headers": [("set-cookie", "from=errors"), ("x-error-service", "1"), ("cache-control", "max-age=30")]}
    policy = {"errorService": SVC, "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["4xx", "5xx"], "path": "/e.html"}]}}
    e = start_envoy(policy)
    r = e.request("/status/401?x=1", host="www.test:8080", headers={
        "cookie": "session=client-secret", "authorization": "Bearer client-token", "x-request-id": "req-42", "x-custom": "c"})
    assert (r.status, r.body) == (401, b"page")
    # upstream headers dropped, except the preserved list
    for h in ["set-cookie", "x-upstream-secret", "x-error-service"]:
        assert r.header(h) is None, (h, r)
    assert r.header("www-authenticate") == 'Basic realm="test"'
    assert r.header("retry-after") == "7"
    assert r.header("access-control-allow-origin") == "https://app.example"
    assert r.header("cache-control") == "max-age=30"
    # the error service got the facts, not the client's credentials
    (call,) = errors.requests_to("/e.html")
    h = call["headers"]
    assert "cookie" not in h and "authorization" not in h and "x-custom" not in h
    assert h["x-code"] == "401"
    assert h["x-original-uri"] == "/status/401?x=1"
    assert h["x-original-host"] == "www.test:8080"
    assert h["x-request-id"] == "req-42"
    assert h["host"] == "errors.internal"
    assert h["x-format"] == "text/html"


# ---------- the error service failing ----------

def failing_policy(cluster="error_pages", timeout=400, body=None):
    rule = {"matchResponseCodes": ["5xx"], "path": "/e.html"}
    if body:
        rule["body"] = body
    return {"errorService": {"cluster": cluster, "timeoutMs": timeout, "maxBodyBytes": 1000, "prewarm": False},
            "defaultCustomErrorResponsePolicy": {"errorResponseRules": [rule]}}


@pytest.mark.parametrize("case", ["down", "slow", "failing", "oversized", "unknown_cluster", "reset"])
def test_error_service_failures_degrade_to_fallback(start_envoy, errors, case):
    cluster = {"down": "dead", "unknown_cluster": "no_such_cluster"}.get(case, "error_pages")
    errors.pages["/e.html"] = {
        "slow": {"body": "late page", "delay_ms": 2000},
        "failing": {"body": "broken", "status": 500},
        "oversized": {"body": "x" * 5000},
        "reset": {"body": "never", "reset": True},
    }.get(case, {"body": "should not be used"})
    e = start_envoy(failing_policy(cluster=cluster))
    t0 = time.monotonic()
    r = e.request("/status/502")
    took = time.monotonic() - t0
    assert r.status == 502
    assert b"502 Bad Gateway" in r.body and b"UPSTREAM" not in r.body, r
    assert r.header("content-type") == "text/html; charset=utf-8"
    assert took < 5, took  # a bound against hanging, not a speed assertion
    # with an inline body, that body is the fallback
    e2 = start_envoy(failing_policy(cluster=cluster, body="<p>inline fallback {{status}}</p>"))
    r = e2.request("/status/503")
    assert (r.status, r.body) == (503, b"<p>inline fallback 503</p>")
    # failures are never cached: the next error asks again (where a request was possible)
    if case in ("slow", "failing", "oversized", "reset"):
        before = len(errors.requests_to("/e.html"))
        e2.request("/status/503")
        assert len(errors.requests_to("/e.html")) == before + 1
    reason = {"down": "unreachable", "slow": "timeout", "failing": "status", "oversized": "too_large",
              "unknown_cluster": "dispatch", "reset": "unreachable"}[case]
    assert e.counter(f"fetch_failed.{reason}", 1) == 1
    assert e.counter("fallback", 1) == 1


@pytest.mark.one_worker
def test_upstream_connection_kept_alive_and_large_body_swallowed(start_envoy, errors, upstream):
    errors.pages["/e.html"] = {"body": "page", "headers": [("cache-control", "no-store")]}
    e = start_envoy(failing_policy())
    for i in range(5):
        r = e.request("/status/500?bytes=3000000&chunked=1")  # > Envoy's 1 MiB buffer limit
        assert (r.status, r.body) == (500, b"page"), r
    stats = e.stats("cluster.upstream.upstream_cx")
    assert stats["cluster.upstream.upstream_cx_total"] == 1, stats
    assert stats.get("cluster.upstream.upstream_cx_destroy_local_with_active_rq", 0) == 0, stats


# Original bodies of every shape, dropped chunk by chunk (the page waits for the last chunk,
# up to 64 KiB): in every case the client gets exactly the page and the upstream connection
# stays pooled. The page has a content-length only when the
# original announced one under the drop limit (so the page surely ends the stream).
BODIES = {
    "small_with_length": ("bytes=200", True),
    "large_with_length": ("bytes=100000", False),
    "many_small_chunks": ("bytes=12000&chunked=1&chunk_bytes=1000&chunk_delay_ms=2", False),
    "chunked_under_the_drop_limit": ("bytes=40000&chunked=1&chunk_bytes=1000&chunk_delay_ms=1", False),
    "past_the_drop_limit": ("bytes=100000&chunked=1&chunk_bytes=4096&chunk_delay_ms=1", False),
    "empty_chunked": ("bytes=0&chunked=1", False),
}


@pytest.mark.one_worker
def test_original_body_never_reaches_the_client(start_envoy, errors, upstream):
    page = b"<h1>error page</h1>" * 10
    errors.pages["/e.html"] = {"body": page.decode()}
    e = start_envoy(failing_policy())
    for case, (query, with_length) in BODIES.items():
        r = e.request(f"/status/500?{query}")
        assert (r.status, r.body) == (500, page), (case, r)
        if with_length:
            assert r.headers.get("content-length") == [str(len(page))], (case, r.headers)
        else:
            assert r.headers.get("transfer-encoding") == ["chunked"], (case, r.headers)
    stats = e.stats("cluster.upstream.upstream_cx")
    assert stats["cluster.upstream.upstream_cx_total"] == 1, stats


# ---------- bad policies ----------

BAD = [
    ("{not json", "invalid policy: <policy>: not valid JSON"),
    ({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "colour": "red"}]}},
     "defaultCustomErrorResponsePolicy.errorResponseRules[0].colour: unknown field"),
    ({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["4x4"], "body": "x"}]}},
     "defaultCustomErrorResponsePolicy.errorResponseRules[0].matchResponseCodes[0]: \"4x4\" is not a code"),
    ({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x"}, {"matchResponseCodes": ["404"], "body": "y"}]}},
     "errorResponseRules[1].matchResponseCodes[0]: this code or range is already matched"),
    ({"errorService": "error_pages", "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "e.html"}]}},
     "errorResponseRules[0].path: \"e.html\" must start with \"/\""),
    ({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "overrideResponseCode": 600}]}},
     "errorResponseRules[0].overrideResponseCode: 600 is outside 200-599"),
    ({"hostRules": [{"hosts": ["a"], "pathMatcher": "m"}], "pathMatchers": [{"name": "m", "routeRules": [{"priority": 1, "matchRules": [{"regexMatch": "(["}], "customErrorResponsePolicy": {}}]}]},
     "pathMatchers[0].routeRules[0].matchRules[0].regexMatch: invalid regex"),
    ({"hostRules": [{"hosts": ["a"], "pathMatcher": "nope"}]}, "hostRules[0].pathMatcher: no path matcher is named \"nope\""),
    ({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"]}]}},
     "errorResponseRules[0]: a rule needs a path"),
    ({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/e.html"}]}},
     "errorResponseRules[0].path: no errorService is in scope"),
]


@pytest.mark.parametrize("policy,message", BAD, ids=[m.split(":")[0][-40:] for _, m in BAD])
def test_bad_policy_refused_with_field_path(start_envoy, policy, message):
    e = start_envoy(policy, expect_ready=False)
    if e.proc.poll() is None:
        # Envoy may stay up with the listener refused; it must never become ready with it.
        assert not e._ready()
    log = e.log_text()
    assert message in log, log[-3000:]


def test_unused_path_matcher_is_only_a_warning(start_envoy):
    e = start_envoy({"pathMatchers": [{"name": "orphan"}]})
    assert "path matcher \"orphan\" is not named by any host rule" in e.log_text()
    assert e.request("/hello").status == 200
