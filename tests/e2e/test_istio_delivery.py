"""Istio-style delivery, simulated with the real Envoy: the module fetched from an HTTP URL
and checked against its sha256 (what a WasmPlugin's `url: https://...` with `sha256` asks
for), failing open (failStrategy FAIL_OPEN) when the digest is wrong or the URL unreachable,
and the policy passed the way Istio serialises a WasmPlugin's `pluginConfig`."""

import hashlib
import json
import math

import pytest
import yaml

from harness import ROOT, WASM, cluster, hcm_of
from servers import ErrorServiceHandler, Running, dead_port

pytestmark = pytest.mark.wasm_only(reason="Istio delivers wasm modules (WasmPlugin); the dynamic module is a file Envoy loads")

SVC = {"cluster": "error_pages", "timeoutMs": 1000}
POLICY = {"errorService": SVC, "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
    {"matchResponseCodes": ["404"], "path": "/e/404.html"}]}}


@pytest.fixture
def module_server():
    s = Running(ErrorServiceHandler)
    s.pages["/custom_error_pages.wasm"] = {"body": WASM.read_bytes(), "ct": "application/wasm"}
    yield s
    s.stop()


def remote_module(port, sha256, failure_policy="FAIL_OPEN"):
    """The filter's code from `http://127.0.0.1:PORT/custom_error_pages.wasm` over a cluster."""
    def customize(config):
        config["static_resources"]["clusters"].append(cluster("module_server", port))
        wasm = hcm_of(config)["http_filters"][0]["typed_config"]["config"]
        wasm["vm_config"]["code"] = {"remote": {
            "http_uri": {"uri": f"http://127.0.0.1:{port}/custom_error_pages.wasm", "cluster": "module_server", "timeout": "5s"},
            "sha256": sha256,
        }}
        wasm["failure_policy"] = failure_policy
    return customize


def test_module_from_an_http_url_with_its_sha256(start_envoy, errors, module_server):
    errors.pages["/e/404.html"] = {"body": "branded"}
    digest = hashlib.sha256(WASM.read_bytes()).hexdigest()
    e = start_envoy(POLICY, customize=remote_module(module_server.port, digest))
    assert e.request("/status/404").body == b"branded"
    assert len(module_server.requests_to("/custom_error_pages.wasm")) >= 1


@pytest.mark.parametrize("case", ["wrong digest", "unreachable url"])
def test_a_module_that_cannot_be_had_fails_open(start_envoy, errors, module_server, case):
    errors.pages["/e/404.html"] = {"body": "branded"}
    if case == "wrong digest":
        customize = remote_module(module_server.port, "0" * 64)
    else:
        customize = remote_module(dead_port(), hashlib.sha256(WASM.read_bytes()).hexdigest())
    e = start_envoy(POLICY, customize=customize)
    r = e.request("/status/404")
    assert r.status == 404 and b"UPSTREAM-ERROR-BODY" in r.body, "unbranded, and served"
    assert e.request("/hello").body == b"hello from upstream"


def protojson(value):
    """A google.protobuf.Struct as Istio's protomarshal.ToJSON writes it: keys sorted (Go
    marshals maps in key order), every number a double printed the ES6 way (1000, not
    1000.0), no spaces."""
    def norm(v):
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            f = float(v)
            return int(f) if f.is_integer() and math.fabs(f) < 1e21 else f
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return [norm(x) for x in v]
    return json.dumps(norm(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_the_policy_as_istio_serialises_a_wasmplugins_plugin_config(start_envoy, errors):
    docs = list(yaml.safe_load_all((ROOT / "istio/wasmplugin.yaml").read_text()))
    plugin_config = next(d for d in docs if d["kind"] == "WasmPlugin")["spec"]["pluginConfig"]
    # Istio's cluster names do not exist here: point the error service at the test's.
    plugin_config["errorService"]["cluster"] = "error_pages"
    text = protojson(plugin_config)
    assert text.startswith('{"defaultCustomErrorResponsePolicy":') and ": " not in text.split('"body"')[0]
    for rule in plugin_config["defaultCustomErrorResponsePolicy"]["errorResponseRules"]:
        if "path" in rule:
            errors.pages[rule["path"].replace("{status}", "404")] = {"body": "istio page"}

    def as_istio(config):
        wasm = hcm_of(config)["http_filters"][0]["typed_config"]["config"]
        wasm["name"] = "istio-ingress.custom-error-pages"  # namespace.name, as Istio names it
        wasm["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": text}
        wasm["vm_config"]["environment_variables"] = {"key_values": {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"}}

    e = start_envoy(None, customize=as_istio)
    assert "invalid policy" not in e.log_text()
    r = e.request("/status/404")
    assert r.status == 404 and r.body == b"istio page", r
