"""The dynamic module's own ways, in the real Envoy: a route's or virtual host's
`typed_per_filter_config` names the policy, a bad one is refused when Envoy loads the
routes, and the counters appear under the filter's metrics namespace."""

import pytest

from harness import FILTER_NAME, hcm_of

pytestmark = pytest.mark.native_only(reason="typed_per_filter_config carrying a policy is the dynamic module's")

POLICY = {
    "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["4xx", "5xx"], "body": "site {{status}}", "contentType": "text/plain"}]},
    "policies": {
        "checkout": {"errorResponseRules": [{"matchResponseCodes": ["503"], "body": "checkout {{status}}", "contentType": "text/plain"}]},
        "api": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "body": "{\"error\":{{status}}}", "contentType": "application/json"},
                                       {"matchResponseCodes": ["404"], "passthrough": True}]},
    },
}


def per_filter(value):
    return {FILTER_NAME: {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute",
        "dynamic_module_config": {"name": "custom_error_pages"},
        "per_route_config_name": "custom_error_pages",
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": value},
    }}


def route(name, prefix, **extra):
    return {"name": name, "match": {"prefix": prefix}, "route": {"cluster": "upstream"}, **extra}


def vhosts(checkout_config='{"policy": "checkout"}'):
    def customize(config):
        hcm_of(config)["route_config"]["virtual_hosts"] = [
            {"name": "shop", "domains": ["shop.test"], "typed_per_filter_config": per_filter('{"policy": "api"}'), "routes": [
                route("checkout", "/checkout/", typed_per_filter_config=per_filter(checkout_config)),
                route("meta", "/meta/", metadata={"filter_metadata": {"custom_error_pages": {"policy": "checkout"}}},
                      typed_per_filter_config=per_filter('{"policy": "api"}')),
                route("typo", "/typo/", typed_per_filter_config=per_filter('{"policy": "chekout"}')),
                route("plain", "/"),
            ]},
            {"name": "all", "domains": ["*"], "routes": [
                route("meta-only", "/meta-only/", metadata={"filter_metadata": {"custom_error_pages": {"policy": "checkout"}}}),
                route("default", "/"),
            ]},
        ]
    return customize


def test_a_routes_typed_per_filter_config_names_its_policy(start_envoy):
    e = start_envoy(POLICY, customize=vhosts())
    r = e.request("/checkout/status/503", host="shop.test")
    assert (r.status, r.body) == (503, b"checkout 503"), r
    # checkout has no 502: the levels below the route's policy answer (the site default).
    r = e.request("/checkout/status/502", host="shop.test")
    assert (r.status, r.body) == (502, b"site 502"), r
    assert "rule=policies.checkout.errorResponseRules[0]" in e.wait_access_line("GET /checkout/status/503")


def test_a_virtual_hosts_typed_per_filter_config_applies_to_its_routes_without_one(start_envoy):
    e = start_envoy(POLICY, customize=vhosts())
    r = e.request("/other/status/500", host="shop.test")
    assert (r.status, r.body, r.header("content-type")) == (500, b'{"error":500}', "application/json"), r
    r = e.request("/other/status/404", host="shop.test")
    assert r.status == 404 and r.body != b"site 404", "the api policy passes 404 through"
    r = e.request("/other/status/500", host="www.test")
    assert r.body == b"site 500", "another virtual host: no policy named"


def test_typed_per_filter_config_comes_before_route_metadata(start_envoy):
    e = start_envoy(POLICY, customize=vhosts())
    r = e.request("/meta/status/503", host="shop.test")
    assert r.body == b'{"error":503}', r
    r = e.request("/meta-only/status/503", host="www.test")
    assert r.body == b"checkout 503", "route metadata alone still names the policy"


def test_an_unknown_policy_name_is_skipped_and_counted(start_envoy):
    e = start_envoy(POLICY, customize=vhosts())
    r = e.request("/typo/status/503", host="shop.test")
    assert (r.status, r.body) == (503, b"site 503"), r
    assert e.counter("unknown_policy", 1) == 1
    assert 'names policy "chekout"' in e.log_text()


@pytest.mark.parametrize("bad,why", [
    ('{"policy": 3}', "policy: expected a non-empty string"),
    ('{"policy": "a", "extra": 1}', "extra: unknown field"),
    ("checkout", "not JSON"),
])
def test_a_bad_per_route_config_is_refused_with_the_reason(start_envoy, bad, why):
    e = start_envoy(POLICY, customize=vhosts(bad), expect_ready=False)
    assert e.wait_exit() not in (None, 0)
    assert f"invalid per-route configuration: {why}" in e.log_text()


def test_counters_appear_under_the_dynamic_modules_namespace(start_envoy):
    e = start_envoy(POLICY, customize=vhosts())
    e.request("/checkout/status/503", host="shop.test")
    assert e.counter("intercepted", 1) == 1
    assert e.counter("inline", 1) == 1
