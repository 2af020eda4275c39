"""The sample envoy/envoy.yaml (the demo's and the compose harness's configuration), with
the demo backend and the demo error pages, behaves as the README's tour says."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import BUILD, ROOT, WASM, Envoy, native_filter
from servers import free_port

sys.path.insert(0, str(ROOT / "envoy"))
import checks  # noqa: E402

SAMPLE = ROOT / "envoy/envoy.yaml"
NATIVE_SAMPLE = ROOT / "envoy/envoy.native.yaml"


def wasm_config(cfg):
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["http_filters"][0]["typed_config"]["config"]


def test_inline_policy_is_policy_json():
    cfg = yaml.safe_load(SAMPLE.read_text())
    inline = json.loads(wasm_config(cfg)["configuration"]["value"])
    assert inline == json.loads((ROOT / "envoy/policy.json").read_text())


def test_native_sample_is_the_sample_with_the_dynamic_module():
    """envoy/envoy.native.yaml (the native run's and the compose stack's configuration) is
    envoy.yaml with the dynamic module in the wasm filter's place, nothing else."""
    cfg = yaml.safe_load(SAMPLE.read_text())
    as_native(cfg)
    assert yaml.safe_load(NATIVE_SAMPLE.read_text()) == cfg


def wait_port(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server on {port} exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def as_native(cfg):
    """The sample with the dynamic module in the wasm filter's place: the same policy, and
    the per-route switch under the dynamic module's filter name (docs/native.md)."""
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    policy = wasm_config(cfg)["configuration"]["value"]
    hcm["http_filters"][0] = native_filter(policy)
    for vh in hcm["route_config"]["virtual_hosts"]:
        for r in vh.get("routes", []):
            per_filter = r.get("typed_per_filter_config", {})
            if "envoy.filters.http.wasm" in per_filter:
                per_filter["custom_error_pages"] = per_filter.pop("envoy.filters.http.wasm")


@pytest.fixture
def sample(tmp_path):
    backend_port, pages_port = free_port(), free_port()
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "envoy/demo/backend.py"), str(backend_port)]),
        subprocess.Popen([sys.executable, str(ROOT / "envoy/demo/pages.py"), str(pages_port), str(ROOT / "envoy/error-pages")]),
    ]
    e = None
    try:
        wait_port(backend_port, procs[0])
        wait_port(pages_port, procs[1])
        # The native run loads the native sample as the compose stack does (a test above keeps
        # it equal to envoy.yaml but for the filter).
        cfg = yaml.safe_load((NATIVE_SAMPLE if BUILD == "native" else SAMPLE).read_text())
        e = Envoy(tmp_path, None, None, None, config=cfg)
        cfg["admin"]["address"]["socket_address"]["port_value"] = e.admin_port
        cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = e.port
        ports = {8081: backend_port, 8082: pages_port}
        for c in cfg["static_resources"]["clusters"]:
            addr = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            addr["port_value"] = ports.get(addr["port_value"], addr["port_value"])
        if BUILD != "native":
            wasm_config(cfg)["vm_config"]["code"]["local"]["filename"] = str(WASM)
        e.start()
        yield e
    finally:
        if e:
            e.stop()
            print(e.log_text()[-5000:])
        for p in procs:
            p.terminate()
            p.wait()


def test_sample_tour(sample):
    """The same checks `envoy/checks.py` runs against the docker-compose stack."""
    results = checks.run(f"http://127.0.0.1:{sample.port}", f"http://127.0.0.1:{sample.admin_port}")
    failed = [what for what, ok in results if not ok]
    assert failed == [], failed
    assert len(results) == 18
