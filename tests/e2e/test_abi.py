"""The dynamic module's hand-written ABI (src/dynamic_module/abi.rs) against the Envoy binary under
test (CI runs this suite on every Envoy the native build supports: 1.40.0 and 1.39.3): every
callback the module imports is one this Envoy exports, and every positional constant the
module passes means what the module takes it for. Envoy's header is not copied into the
repository; the binary and its behaviour are the reference."""

import re
import shutil
import subprocess

import pytest
from h2upstream import add_h2_route, h2_get
from harness import ENVOY, NATIVE_DIR, hcm_of

pytestmark = pytest.mark.native_only(reason="the dynamic module's ABI")
SO = NATIVE_DIR / "libcustom_error_pages.so"


def dynamic_symbols(path, *flags):
    nm = shutil.which("nm")
    assert nm, "nm (binutils) is needed to read dynamic symbol tables"
    out = subprocess.run([nm, "-D", *flags, str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_every_callback_the_module_imports_is_exported_by_this_envoy():
    imported = {s for s in dynamic_symbols(SO, "--undefined-only") if s.startswith("envoy_dynamic_module_callback_")}
    assert len(imported) >= 15, imported  # the module's calls into Envoy, read from the .so itself
    exported = dynamic_symbols(ENVOY, "--defined-only")
    assert imported - exported == set(), f"{ENVOY} does not export them"
    # The twin: a name Envoy does not export is seen as missing.
    assert "envoy_dynamic_module_callback_no_such_call" not in exported


POLICY = {
    "errorService": {"cluster": "error_pages", "timeoutMs": 2000, "prewarm": False},
    "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["503"], "body": "proxy: {{codeDetails}}", "contentType": "text/plain", "source": "proxy"},
        {"matchResponseCodes": ["503"], "body": "backend", "contentType": "text/plain", "source": "upstream"},
        {"matchResponseCodes": ["404"], "path": "/e/404.html"},
    ]},
    "hostRules": [{"hosts": ["abi.test"], "pathMatcher": "abi"}],
    "pathMatchers": [{"name": "abi", "routeRules": [
        {"priority": 1, "matchRules": [{"routeName": "checkout"}],
         "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["502"], "body": "route checkout", "contentType": "text/plain"}]}},
        {"priority": 2, "matchRules": [{"prefixMatch": "/", "headerMatches": [{"headerName": "x-beta", "exactMatch": "yes"}]}],
         "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["502"], "body": "beta header", "contentType": "text/plain"}]}},
    ]}],
    "policies": {"named": {"errorResponseRules": [{"matchResponseCodes": ["502"], "body": "named by route metadata", "contentType": "text/plain"}]}},
}


def routes_for(h2_port):
    def customize(config):
        add_h2_route(config, h2_port)
        routes = hcm_of(config)["route_config"]["virtual_hosts"][0]["routes"]
        routes[1:1] = [
            {"name": "named-route", "match": {"prefix": "/named/"}, "route": {"cluster": "upstream", "prefix_rewrite": "/"},
             "metadata": {"filter_metadata": {"custom_error_pages": {"policy": "named"}}}},
            {"name": "typo-route", "match": {"prefix": "/typo/"}, "route": {"cluster": "upstream", "prefix_rewrite": "/"},
             "metadata": {"filter_metadata": {"custom_error_pages": {"policy": "no-such-policy"}}}},
        ]
    return customize


def test_each_positional_constant_means_what_the_module_takes_it_for(start_envoy, errors, h2_upstream):
    errors.pages["/e/404.html"] = {"body": "branded 404"}
    e = start_envoy(POLICY, customize=routes_for(h2_upstream.port))
    # Response headers (header type 2: `:status`), the received body (body type 2: the
    # original replaced), a callout started (init result 0) and answered.
    r = e.request("/status/404?bytes=300")
    assert (r.status, r.body) == (404, b"branded 404"), r
    # The attribute read as response code details (16): Envoy's own reply tells it.
    r = e.request("/dead")
    assert r.status == 503 and r.body.startswith(b"proxy: upstream_reset_before_response_started{remote_connection_failure"), r
    assert e.request("/status/503").body == b"backend"
    # The attribute read as the route's name (61), and its twin.
    assert e.request("/checkout/status/502", host="abi.test").body == b"route checkout"
    assert e.request("/status/502", host="abi.test").body != b"route checkout"
    # Request headers (header type 0), and the twin without the header.
    assert e.request("/status/502", host="abi.test", headers={"x-beta": "yes"}).body == b"beta header"
    assert e.request("/status/502", host="abi.test", headers={"x-beta": "no"}).body != b"beta header"
    # The metadata source read as the route's (1).
    assert e.request("/named/status/502").body == b"named by route metadata"
    # The buffered response body (body type 3): the page goes before an HTTP/2 upstream's trailers.
    status, _, body, trailers = h2_get(e.port, "/h2/x?status=404&trailers=1")
    assert (status, body, trailers) == (404, b"branded 404", {"x-checksum": "abc123"})
    # Log levels (warn 3, info 2) land at Envoy's matching levels; counters (result 0) count.
    e.request("/typo/status/502")
    log = e.log_text()
    assert re.search(r"\[warning\]\[dynamic_modules\].*names policy \"no-such-policy\"", log), "warn is Envoy's warning"
    assert re.search(r"\[info\]\[dynamic_modules\].*policy loaded", log), "info is Envoy's info"
    assert e.counter("unknown_policy", 1) == 1
    assert e.counter("intercepted", 7) == 7, "every replaced response above (the twins and the typo are not)"
