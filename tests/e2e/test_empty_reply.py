"""An empty reply (`"body": ""` and no `contentType`): the rule's status and headers, no body,
no content type, `content-length: 0`, in place of a backend's error and of Envoy's own reply,
for HTTP/1.1, HTTP/2 and HEAD. Listed in docs/faults.md."""

from h2upstream import h2_get

POLICY = {"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
    # Envoy Gateway's bare reply: a 403 becomes a 404 that says nothing.
    {"matchResponseCodes": ["403"], "body": "", "overrideResponseCode": 404, "headers": {"x-why": "hidden"}},
    {"matchResponseCodes": ["500"], "body": "x"},
]}}


def test_a_backends_error_becomes_an_empty_reply(start_envoy):
    e = start_envoy(POLICY)
    r = e.request("/status/403?bytes=5000")
    assert (r.status, r.body) == (404, b""), r
    assert r.header("content-type") is None and r.header("content-length") == "0", r.headers
    assert r.header("x-why") == "hidden"
    assert "original=403 served=404 outcome=inline" in e.wait_access_line("GET /status/403")
    # The twin: a one-byte inline page keeps the default content type.
    r = e.request("/status/500")
    assert (r.status, r.body, r.header("content-type")) == (500, b"x", "text/html; charset=utf-8")


def test_envoys_own_reply_head_and_http2_get_the_empty_reply_too(start_envoy):
    e = start_envoy(POLICY)
    r = e.request("/forbidden")  # Envoy's direct_response: 403 "denied by proxy"
    assert (r.status, r.body, r.header("content-type")) == (404, b"", None), r
    r = e.request("/status/403", method="HEAD")
    assert (r.status, r.header("content-type")) == (404, None), r
    status, headers, body, _ = h2_get(e.port, "/status/403?bytes=300")
    assert (status, body) == (404, b"")
    assert "content-type" not in headers and headers.get("content-length") == "0", headers
    status, headers, body, _ = h2_get(e.port, "/forbidden")
    assert (status, body, "content-type" in headers) == (404, b"", False), headers


REDIRECTS = {"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
    # nginx's oldest pattern: `error_page 401 = /login` as a redirect that comes back.
    {"matchResponseCodes": ["401"], "overrideResponseCode": 302, "headers": {"location": "/login?next={{url}}"}},
    {"matchResponseCodes": ["410"], "overrideResponseCode": 301, "headers": {"location": "https://new.test{{path}}"}},
]}}


def test_a_redirect_rule_sends_the_client_to_its_location(start_envoy):
    e = start_envoy(REDIRECTS)
    r = e.request("/status/401?bytes=200", headers={"x-forwarded-proto": "https"})
    assert (r.status, r.body) == (302, b""), r
    assert r.header("location") == "/login?next=https%3A%2F%2Fwww.test%2Fstatus%2F401%3Fbytes%3D200", r.headers
    assert r.header("content-type") is None and r.header("content-length") == "0"
    r = e.request("/status/410?a=b%20c", method="HEAD")
    assert (r.status, r.header("location")) == (301, "https://new.test/status/410?a=b%20c"), r.headers
    status, headers, body, _ = h2_get(e.port, "/status/401")
    assert (status, body, headers.get("location")) == (302, b"", "/login?next=http%3A%2F%2Fwww.test%2Fstatus%2F401")
    # The twin: a status no rule covers keeps its own answer, with no location.
    r = e.request("/status/403")
    assert r.status == 403 and r.header("location") is None
