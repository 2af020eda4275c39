"""Configuration replaced without a restart, the way Istio and every xDS control plane
deliver it: the listener over LDS and the filter over ECDS (`config_discovery`, how Istio
delivers a WasmPlugin), both from watched files that are replaced atomically."""

import http.client
import json
import os
import time

import pytest

from harness import FILTER_TYPE, filter_under_test, hcm_of

SVC = {"cluster": "error_pages", "timeoutMs": 2000, "cacheTtlSeconds": 300}


def policy(path, svc=SVC):
    return {"errorService": svc, "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404", "503"], "path": path}]}}


class Xds:
    """The files Envoy watches; each update is written beside and renamed into place."""

    def __init__(self, directory):
        self.dir = directory
        self.version = 0

    def write(self, name, resources):
        self.version += 1
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps({"version_info": str(self.version), "resources": resources}))
        os.replace(tmp, self.dir / name)

    def source(self, name):
        return {"resource_api_version": "V3",
                "path_config_source": {"path": str(self.dir / name), "watched_directory": {"path": str(self.dir)}}}

    def filter(self, pol):
        config = filter_under_test(pol)["typed_config"]
        self.write("ecds.json", [{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                                  "name": "custom_error_pages", "typed_config": config}])


@pytest.fixture
def xds(start_envoy, tmp_path):
    d = tmp_path / "xds"
    d.mkdir()
    x = Xds(d)
    x.filter(policy("/v1.html"))

    def customize(config):
        listener = config["static_resources"].pop("listeners")[0]
        hcm = hcm_of({"static_resources": {"listeners": [listener]}})
        hcm["http_filters"][0] = {"name": "custom_error_pages", "config_discovery": {
            "config_source": x.source("ecds.json"), "type_urls": [FILTER_TYPE]}}
        x.listener = listener
        x.write("lds.json", [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}])
        config["node"] = {"id": "custom-error-pages-test", "cluster": "test"}
        config["dynamic_resources"] = {"lds_config": x.source("lds.json")}

    x.envoy = start_envoy(None, customize=customize)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the listener arrives over LDS after the admin is up
        try:
            x.envoy.request("/hello", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    return x


def until(fetch, want, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def body(e, path="/status/404"):
    r = e.request(path)
    return r.body


@pytest.mark.one_worker
def test_a_new_policy_applies_to_new_requests_and_the_old_cache_is_gone(xds, errors):
    errors.pages["/v1.html"] = {"body": "one"}
    errors.pages["/v2.html"] = {"body": "two"}
    e = xds.envoy
    assert body(e) == b"one"
    errors.pages["/v1.html"] = {"body": "one, changed"}
    assert body(e) == b"one", "served from the cache"
    xds.filter(policy("/v2.html"))
    assert until(lambda: body(e), b"two") == b"two"
    # Back to the first policy: its object is fetched again, not served from before the swap.
    xds.filter(policy("/v1.html"))
    assert until(lambda: body(e), b"one, changed") == b"one, changed"


def test_a_bad_policy_is_refused_with_its_field_path_and_the_old_one_keeps_serving(xds, errors):
    errors.pages["/v1.html"] = {"body": "one"}
    e = xds.envoy
    assert body(e) == b"one"
    bad = policy("/v1.html")
    bad["defaultCustomErrorResponsePolicy"]["errorResponseRules"][0]["matchResponseCodes"] = ["4x4"]
    xds.filter(bad)
    needle = 'invalid policy: defaultCustomErrorResponsePolicy.errorResponseRules[0].matchResponseCodes[0]: "4x4"'
    deadline = time.monotonic() + 15
    while needle not in e.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert needle in e.log_text()
    for _ in range(5):
        assert body(e) == b"one"
    assert e.stats("extension_config_discovery").get("extension_config_discovery.http_filter.custom_error_pages.config_fail", 0) >= 1


def test_requests_in_flight_during_a_swap_complete(xds, errors):
    errors.pages["/v1.html"] = {"body": "one", "delay_ms": 800}
    errors.pages["/v2.html"] = {"body": "two"}
    e = xds.envoy
    c = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
    c.request("GET", "/status/503", headers={"host": "www.test"})
    # The swap comes while the fetch for it is in the error service's hands (it waits 800 ms).
    assert until(lambda: errors.at_once >= 1, True) is True, "a fetch under way"
    xds.filter(policy("/v2.html"))
    r = c.getresponse()
    assert (r.status, r.read()) == (503, b"one")
    c.close()
    assert until(lambda: body(e), b"two") == b"two"


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_rss_stays_flat_over_hundreds_of_swaps(xds, errors):
    errors.pages["/v1.html"] = {"body": "one"}
    errors.pages["/v2.html"] = {"body": "two"}
    e = xds.envoy
    def swap(i):
        want = b"two" if i % 2 else b"one"
        xds.filter(policy("/v2.html" if i % 2 else "/v1.html"))
        assert until(lambda: body(e), want) == want
    for i in range(20):  # warm up: V8 and the allocator settle
        swap(i)
    before = rss_kib(e.proc.pid)
    for i in range(20, 220):
        swap(i)
    after = rss_kib(e.proc.pid)
    print(f"RSS over 200 policy swaps: {before} KiB -> {after} KiB ({after - before:+d} KiB)")
    assert after - before < 20 * 1024, f"{before} -> {after} KiB"


def test_a_new_policys_objects_are_prewarmed_when_it_goes_live(xds, errors):
    errors.pages["/v1.html"] = {"body": "one"}
    errors.pages["/v3.html"] = {"body": "three"}
    e = xds.envoy
    assert until(lambda: len(errors.requests_to("/v1.html")) > 0, True) is True, "the first policy's object, prewarmed"
    assert errors.requests_to("/v3.html") == []
    xds.filter(policy("/v3.html"))
    assert until(lambda: len(errors.requests_to("/v3.html")) > 0, True) is True, "fetched with no request asking"
    assert until(lambda: body(e), b"three") == b"three"
