"""The fetch's shape: a service's static `requestHeaders` ride on every fetch (a request's
and a prewarm's), client headers never do, and `{originalStatus}` names the code in a path.
Listed in docs/faults.md."""


def test_static_headers_ride_on_every_fetch_and_client_headers_never(start_envoy, errors):
    errors.pages["/e/502.html"] = {"body": "branded 502"}
    errors.pages["/e/404.html"] = {"body": "branded 404"}
    policy = {"errorService": {"cluster": "error_pages", "requestHeaders": {"X-Tenant": "shop", "x-api-key": "k1"}},
              "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
                  {"matchResponseCodes": ["502"], "path": "/e/{originalStatus}.html"},
                  {"matchResponseCodes": ["404"], "path": "/e/404.html"}]}}
    e = start_envoy(policy)
    r = e.request("/status/502", headers={"x-tenant": "evil", "cookie": "session=1", "authorization": "Bearer c"})
    assert (r.status, r.body) == (502, b"branded 502")
    # Prewarmed by the wasm build, fetched on the request's path by the dynamic module.
    assert e.request("/status/404").body == b"branded 404"
    assert errors.requests_to("/e/404.html") and errors.requests_to("/e/502.html")
    for fetch in errors.requests_to("/e/502.html") + errors.requests_to("/e/404.html"):
        h = fetch["headers"]
        assert (h.get("x-tenant"), h.get("x-api-key")) == ("shop", "k1"), h
        assert "cookie" not in h and "authorization" not in h, h
    # The twin: a service without them sends none.
    e2 = start_envoy({"errorService": "error_pages",
                      "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["503"], "path": "/e/503.html"}]}})
    errors.pages["/e/503.html"] = {"body": "branded 503"}
    assert e2.request("/status/503").body == b"branded 503"
    assert all("x-tenant" not in f["headers"] for f in errors.requests_to("/e/503.html"))
