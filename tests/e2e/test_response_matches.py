"""Matching the response, not only its code (`responseHeaderMatches`): an API's own
`application/problem+json` errors pass untouched while an HTML error on the same route gets
the page; only empty bodies are replaced; Envoy's own replies are matched on their headers
too. Both builds. Listed in docs/faults.md."""

from urllib.parse import quote

from h2upstream import h2_get

POLICY = {"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
    {"name": "api-own-errors", "matchResponseCodes": ["4xx"], "passthrough": True,
     "responseHeaderMatches": [{"headerName": "content-type", "prefixMatch": "application/problem+json"}]},
    {"matchResponseCodes": ["4xx"], "body": "<h1>the page</h1>"},
    {"name": "empty-502", "matchResponseCodes": ["502"], "body": "<h1>bad gateway</h1>",
     "responseHeaderMatches": [{"headerName": "content-length", "exactMatch": "0"}]},
]}}
UPSTREAM_BODY = b"UPSTREAM-ERROR-BODY status=404 secret=s3cr3t"


def test_an_apis_own_json_error_passes_while_an_html_error_gets_the_page(start_envoy):
    e = start_envoy(POLICY)
    problem = quote("application/problem+json; charset=utf-8")
    r = e.request(f"/status/404?ct={problem}")
    assert (r.status, r.body, r.header("content-type")) == (404, UPSTREAM_BODY, "application/problem+json; charset=utf-8")
    # The twin on the same route and code: an HTML error gets the page.
    r = e.request("/status/404?ct=text/html")
    assert (r.status, r.body) == (404, b"<h1>the page</h1>"), r
    # Over HTTP/2 to the client, the same.
    status, headers, body, _ = h2_get(e.port, f"/status/404?ct={problem}")
    assert (status, body) == (404, UPSTREAM_BODY)
    status, _, body, _ = h2_get(e.port, "/status/404?ct=text/html")
    assert (status, body) == (404, b"<h1>the page</h1>")
    assert e.counter("passthrough", 2) == 2
    # Envoy writes its file access log on a timer: the lines are read once, after the requests.
    line = e.wait_access_line(f"GET /status/404?ct={problem} ", timeout=20)
    assert "outcome=passthrough rule=defaultCustomErrorResponsePolicy.errorResponseRules[0]" in line, line
    line = e.wait_access_line("GET /status/404?ct=text/html ", timeout=20)
    assert "outcome=inline rule=defaultCustomErrorResponsePolicy.errorResponseRules[1]" in line, line


def test_only_an_empty_502_is_replaced(start_envoy):
    e = start_envoy(POLICY)
    r = e.request("/status/502?empty=1")
    assert (r.status, r.body) == (502, b"<h1>bad gateway</h1>"), r
    # The twin: a 502 with a body of its own keeps it (no rule for it holds: untouched).
    r = e.request("/status/502?bytes=20")
    assert (r.status, r.body) == (502, b"U" * 20), r
    assert "original=" not in e.wait_access_line("GET /status/502?bytes=20 ", timeout=20)


def test_envoys_own_reply_is_matched_on_its_headers(start_envoy):
    """Envoy's direct_response 403 is text/plain: not the API's own JSON, so it gets the page."""
    e = start_envoy(POLICY)
    r = e.request("/forbidden")
    assert (r.status, r.body) == (403, b"<h1>the page</h1>"), r
