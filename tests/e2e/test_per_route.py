"""Per-route configuration the Envoy way, in the real Envoy: named policies chosen by a
route's or virtual host's metadata, routes selected by the Istio VirtualService that made
them, and Envoy's own per-route switch (`FilterConfig`) turning the filter off or on."""

import pytest

from harness import FILTER_NAME, hcm_of

POLICY = {
    "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["4xx", "5xx"], "body": "site {{status}}", "contentType": "text/plain"}]},
    "hostRules": [{"hosts": ["istio.test"], "pathMatcher": "vs"}],
    "pathMatchers": [{"name": "vs", "routeRules": [{"priority": 1,
        "matchRules": [{"routeMetadataMatches": [{"namespace": "istio", "key": "config", "suffixMatch": "/virtual-service/shop"}]}],
        "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "body": "shop vs", "contentType": "text/plain"}]}}]}],
    "policies": {
        "checkout": {"errorResponseRules": [{"matchResponseCodes": ["503"], "body": "checkout {{status}}", "contentType": "text/plain"}]},
        "api": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "body": "{\"error\":{{status}}}", "contentType": "application/json"},
                                       {"matchResponseCodes": ["404"], "passthrough": True}]},
    },
}


def policy_md(name, namespace="custom_error_pages"):
    return {"filter_metadata": {namespace: {"policy": name}}}


def route(name, prefix, metadata=None, per_filter=None):
    r = {"name": name, "match": {"prefix": prefix}, "route": {"cluster": "upstream"}}
    if metadata:
        r["metadata"] = metadata
    if per_filter is not None:
        r["typed_per_filter_config"] = {FILTER_NAME: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", **per_filter}}
    return r


def vhosts(filter_disabled=False):
    def customize(config):
        hcm = hcm_of(config)
        hcm["route_config"]["virtual_hosts"] = [
            {"name": "shop", "domains": ["shop.test"], "metadata": policy_md("api"), "routes": [
                route("checkout", "/checkout/", policy_md("checkout")),
                route("typo", "/typo/", policy_md("chekout")),
                route("plain", "/"),
            ]},
            {"name": "istio", "domains": ["istio.test"], "routes": [
                route("vs-shop", "/shop/", {"filter_metadata": {"istio": {"config": "/apis/networking.istio.io/v1alpha3/namespaces/web/virtual-service/shop"}}}),
                route("vs-cart", "/", {"filter_metadata": {"istio": {"config": "/apis/networking.istio.io/v1alpha3/namespaces/web/virtual-service/cart"}}}),
            ]},
            {"name": "all", "domains": ["*"], "routes": [
                route("off", "/off/", per_filter={"disabled": True}),
                route("on", "/on/", per_filter={"config": {}}),  # an empty `config`: enabled (none at all is refused)
                route("default", "/"),
            ]},
        ]
        if filter_disabled:
            hcm["http_filters"][0]["disabled"] = True
    return customize


@pytest.mark.wasm_only(reason="Envoy 1.40 gives a dynamic module no access to a virtual host's metadata (test_native.py covers typed_per_filter_config instead)")
def test_route_metadata_selects_a_named_policy_per_code(start_envoy):
    e = start_envoy(POLICY, customize=vhosts())
    r = e.request("/checkout/status/503", host="shop.test")
    assert (r.status, r.body) == (503, b"checkout 503"), r
    # checkout has no 502: the virtual host's policy ("api") decides, above the site default.
    r = e.request("/checkout/status/502", host="shop.test")
    assert (r.status, r.body) == (502, b'{"error":502}'), r
    assert "original=503 served=503 outcome=inline rule=policies.checkout.errorResponseRules[0]" in e.wait_access_line("GET /checkout/status/503")


@pytest.mark.wasm_only(reason="Envoy 1.40 gives a dynamic module no access to a virtual host's metadata (test_native.py covers typed_per_filter_config instead)")
def test_virtual_host_metadata_and_its_passthrough(start_envoy):
    e = start_envoy(POLICY, customize=vhosts())
    r = e.request("/status/500", host="shop.test")
    assert (r.status, r.body, r.header("content-type")) == (500, b'{"error":500}', "application/json"), r
    r = e.request("/status/404", host="shop.test")
    assert r.status == 404 and b"UPSTREAM-ERROR-BODY" in r.body, "the api policy passes its 404s through"
    assert e.counter("passthrough", 1) == 1
    r = e.request("/status/404", host="other.test")
    assert (r.status, r.body) == (404, b"site 404"), "a virtual host without metadata: the site default"


@pytest.mark.wasm_only(reason="Envoy 1.40 gives a dynamic module no access to a virtual host's metadata (test_native.py covers typed_per_filter_config instead)")
def test_an_unknown_policy_name_is_skipped_and_counted(start_envoy):
    e = start_envoy(POLICY, customize=vhosts())
    for _ in range(2):
        r = e.request("/typo/status/503", host="shop.test")
        assert (r.status, r.body) == (503, b'{"error":503}'), "the next level (the virtual host's) answers"
    assert e.counter("unknown_policy", 2) == 2
    # Logged once per name and worker: with one worker once for both requests.
    assert 1 <= e.log_text().count('names policy "chekout"') <= int(e.concurrency), "logged once per name and worker"


def test_routes_of_one_istio_virtual_service_selected_by_metadata(start_envoy):
    e = start_envoy(POLICY, customize=vhosts())
    r = e.request("/shop/status/502", host="istio.test")
    assert (r.status, r.body) == (502, b"shop vs"), r
    r = e.request("/cart/status/502", host="istio.test")
    assert (r.status, r.body) == (502, b"site 502"), "another VirtualService's route: no match"


def test_filter_config_disabled_turns_the_filter_off_on_a_route(start_envoy):
    e = start_envoy(POLICY, customize=vhosts())
    r = e.request("/off/status/503")
    assert r.status == 503 and b"UPSTREAM-ERROR-BODY" in r.body, r
    r = e.request("/on/status/503")
    assert (r.status, r.body) == (503, b"site 503"), r
    r = e.request("/status/503")
    assert (r.status, r.body) == (503, b"site 503"), r
    assert e.counter("intercepted", 2) == 2


def test_filter_disabled_in_the_chain_and_enabled_per_route(start_envoy):
    e = start_envoy(POLICY, customize=vhosts(filter_disabled=True))
    r = e.request("/on/status/503")
    assert (r.status, r.body) == (503, b"site 503"), "FilterConfig {} enables it on this route"
    for path in ["/status/503", "/off/status/503"]:
        r = e.request(path)
        assert r.status == 503 and b"UPSTREAM-ERROR-BODY" in r.body, (path, r)
