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

from harness import ROOT, WASM, Envoy
from servers import free_port

SAMPLE = ROOT / "envoy/envoy.yaml"


def wasm_config(cfg):
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["http_filters"][0]["typed_config"]["config"]


def test_inline_policy_is_policy_json():
    cfg = yaml.safe_load(SAMPLE.read_text())
    inline = json.loads(wasm_config(cfg)["configuration"]["value"])
    assert inline == json.loads((ROOT / "envoy/policy.json").read_text())


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


@pytest.fixture
def sample(tmp_path):
    backend_port, pages_port = free_port(), free_port()
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "envoy/demo/backend.py"), str(backend_port)]),
        subprocess.Popen([sys.executable, "-m", "http.server", str(pages_port), "--bind", "127.0.0.1",
                          "--directory", str(ROOT / "envoy/error-pages")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    e = None
    try:
        wait_port(backend_port, procs[0])
        wait_port(pages_port, procs[1])
        cfg = yaml.safe_load(SAMPLE.read_text())
        e = Envoy(tmp_path, None, None, None, config=cfg)
        cfg["admin"]["address"]["socket_address"]["port_value"] = e.admin_port
        cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = e.port
        ports = {8081: backend_port, 8082: pages_port}
        for c in cfg["static_resources"]["clusters"]:
            addr = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            addr["port_value"] = ports.get(addr["port_value"], addr["port_value"])
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
    r = sample.request("/status/404")
    assert r.status == 404 and b"We couldn't find that page" in r.body and r.header("set-cookie") is None
    r = sample.request("/status/404", headers={"accept": "application/json"})
    assert r.status == 404 and json.loads(r.body) == {"error": "not_found", "message": "No such resource."}
    r = sample.request("/status/500", headers={"x-request-id": "tour-1"})
    assert r.status == 500 and b"Something went wrong on our side (500)" in r.body and b"tour-1" in r.body
    r = sample.request("/status/500", headers={"accept": "application/json", "x-request-id": "tour-2"})
    assert json.loads(r.body) == {"error": "unavailable", "status": 500, "requestId": "tour-2"}
    r = sample.request("/dead")
    assert r.status == 503 and b"We'll be right back" in r.body and r.header("retry-after") == "120"
    r = sample.request("/status/503")  # the same code from the backend: source "upstream"
    assert r.status == 503 and b"Something went wrong on our side (503)" in r.body
    r = sample.request("/status/404", host="shop.localhost")
    assert b"no longer in the shop" in r.body
    r = sample.request("/status/403", host="x.shop.localhost")
    assert r.status == 403 and b"Please sign in" in r.body
    r = sample.request("/images/status/404", host="shop.localhost")
    assert r.status == 200 and r.header("content-type") == "image/svg+xml" and r.body.startswith(b"<svg")
    r = sample.request("/status/418", host="shop.localhost")  # no /shop/418.html: built-in fallback
    assert r.status == 418 and b"418 Client Error" in r.body
    r = sample.request("/status/404", host="api.localhost")
    assert r.status == 404 and b"backend error page" in r.body  # passthrough
    r = sample.request("/status/503", host="api.localhost")
    assert json.loads(r.body) == {"error": "unavailable", "status": 503, "path": "/status/503"}
    r = sample.request("/checkout", host="api.localhost")
    assert r.status == 503 and b"Checkout is unavailable" in r.body
    assert sample.counter("passthrough") == 1
    assert sample.counter("intercepted") >= 11
