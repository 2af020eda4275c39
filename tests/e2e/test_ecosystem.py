"""docker-compose harness, Istio manifests and OCI packaging: what can be proven without a
Docker engine or a cluster."""

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile

import pytest
import yaml

from harness import ENVOY, ROOT, WASM

pytestmark = pytest.mark.wasm_only(reason="the wasm module's packaging: compose harness, OCI image, Istio manifest, exports")

COMPOSE = ROOT / "envoy/docker-compose.yaml"


def test_compose_file_parses_and_mounts_existing_files():
    c = yaml.safe_load(COMPOSE.read_text())
    assert set(c["services"]) == {"net", "envoy", "backend", "errors"}
    envoy = c["services"]["envoy"]
    assert envoy["image"].startswith("${ENVOY_IMAGE:-envoyproxy/envoy:v1.40")
    mounted = []
    for svc in c["services"].values():
        for v in svc.get("volumes", []):
            host, container = v.split(":")[:2]
            path = (COMPOSE.parent / host).resolve()
            assert path.exists(), f"{host} (mounted at {container}) does not exist"
            mounted.append((path, container))
    # the same envoy.yaml and modules the native tests use, where envoy.yaml expects them; the
    # folders, so that a rebuilt module (a new file) is what Envoy loads when restarted
    assert (ROOT / "envoy", "/work/envoy") in mounted
    assert (ROOT / "target", "/work/target") in mounted
    assert envoy["working_dir"] == "/work"
    assert envoy["environment"]["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] == "/work/target/release"
    assert c["services"]["backend"]["environment"]["PORT"] == "8081"


def test_compose_stack_is_portable_without_host_networking():
    """Docker Desktop has no host networking by default: Envoy, the backend and the error
    service share the `net` service's network namespace (so any one of them restarts alone),
    and `net` publishes Envoy's ports on the host's loopback."""
    c = yaml.safe_load(COMPOSE.read_text())
    assert all(svc.get("network_mode") != "host" for svc in c["services"].values())
    for name in ("envoy", "backend", "errors"):
        assert c["services"][name]["network_mode"] == "service:net"
    assert set(c["services"]["net"]["ports"]) == {"127.0.0.1:${ENVOY_PORT:-10000}:10000", "127.0.0.1:${ADMIN_PORT:-9901}:9901"}
    assert "listen 127.0.0.1:8082;" in (COMPOSE.parent / "compose/nginx.conf").read_text()


def test_compose_command_yields_a_config_envoy_accepts(tmp_path):
    """The container's command, run here with the same shell and sed: it must rewrite exactly
    the listener and admin addresses, and Envoy must accept the result."""
    c = yaml.safe_load(COMPOSE.read_text())
    envoy = c["services"]["envoy"]
    assert envoy["entrypoint"] == ["/bin/sh", "-c"]
    script = envoy["command"][0]
    prepare, _, run = script.partition("&&")
    assert "exec envoy -c /tmp/envoy.yaml" in run
    assert "/work/envoy/${ENVOY_CONFIG:-envoy.yaml} > /tmp/envoy.yaml" in prepare
    local = prepare.replace("/work/envoy/${ENVOY_CONFIG:-envoy.yaml}", str(ROOT / "envoy/envoy.yaml")).replace("/tmp/envoy.yaml", str(tmp_path / "envoy.yaml"))
    subprocess.run(["/bin/sh", "-c", local], check=True)
    original = (ROOT / "envoy/envoy.yaml").read_text()
    rewritten = (tmp_path / "envoy.yaml").read_text()
    changed = [(a, b) for a, b in zip(original.splitlines(), rewritten.splitlines()) if a != b]
    assert len(changed) == 2, changed
    assert all("0.0.0.0" in b and "127.0.0.1" in a for a, b in changed)
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(tmp_path / "envoy.yaml")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in (r.stdout + r.stderr), r.stdout + r.stderr


def test_envoy_config_validates_natively():
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", "envoy/envoy.yaml"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in (r.stdout + r.stderr), r.stdout + r.stderr


def test_istio_manifest_carries_a_policy_the_filter_loads(tmp_path):
    docs = list(yaml.safe_load_all((ROOT / "istio/wasmplugin.yaml").read_text()))
    plugin = next(d for d in docs if d["kind"] == "WasmPlugin")
    assert plugin["apiVersion"] == "extensions.istio.io/v1alpha1"
    spec = plugin["spec"]
    assert spec["phase"] == "AUTHN" and spec["failStrategy"] in ("FAIL_OPEN", "FAIL_CLOSE")
    assert spec["url"].startswith("oci://")
    assert spec["pluginConfig"] == json.loads((ROOT / "istio/policy.json").read_text())
    f = tmp_path / "p.json"
    f.write_text(json.dumps(spec["pluginConfig"]))
    r = subprocess.run([str(ROOT / "scripts/policy"), "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the route name used by the policy is a VirtualService http route name
    vs = next(d for d in docs if d["kind"] == "VirtualService")
    assert "checkout" in [h["name"] for h in vs["spec"]["http"]]


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_oci_layout_is_consistent(tmp_path):
    out = tmp_path / "oci"
    subprocess.run([sys.executable, str(ROOT / "scripts/oci-package.py"), str(out), "--tag", "0.1.0"], check=True, capture_output=True)
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    blob = lambda d: (out / "blobs/sha256" / d.split(":")[1]).read_bytes()
    index = json.loads((out / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "0.1.0"
    manifest_bytes = blob(entry["digest"])
    assert sha(manifest_bytes) == entry["digest"] and len(manifest_bytes) == entry["size"]
    manifest = json.loads(manifest_bytes)
    config_bytes = blob(manifest["config"]["digest"])
    assert sha(config_bytes) == manifest["config"]["digest"] and len(config_bytes) == manifest["config"]["size"]
    (layer,) = manifest["layers"]
    layer_bytes = blob(layer["digest"])
    assert sha(layer_bytes) == layer["digest"] and len(layer_bytes) == layer["size"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    tar_bytes = gzip.decompress(layer_bytes)
    assert json.loads(config_bytes)["rootfs"]["diff_ids"] == [sha(tar_bytes)]
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as t:
        assert t.getnames() == ["plugin.wasm"]
        assert t.extractfile("plugin.wasm").read() == WASM.read_bytes()
    # reproducible: packaging again gives the same manifest digest
    out2 = tmp_path / "oci2"
    subprocess.run([sys.executable, str(ROOT / "scripts/oci-package.py"), str(out2), "--tag", "0.1.0"], check=True, capture_output=True)
    assert json.loads((out2 / "index.json").read_text())["manifests"][0]["digest"] == entry["digest"]


def wasm_exports(data):
    """Export names of a wasm module (export section, id 7)."""
    def leb(pos):
        value = shift = 0
        while True:
            b = data[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value, pos
    assert data[:4] == b"\0asm"
    pos, names = 8, []
    while pos < len(data):
        sid = data[pos]
        size, pos = leb(pos + 1)
        if sid == 7:
            count, p = leb(pos)
            for _ in range(count):
                n, p = leb(p)
                names.append(data[p:p + n].decode())
                _kind, p = data[p + n], p + n + 1
                _index, p = leb(p)
        pos += size
    return set(names)


# SDK callback -> the export Envoy calls it through, for the callbacks scripts/build.sh may remove.
PRUNABLE = {"on_log": "proxy_on_log", "on_done": "proxy_on_done", "on_http_request_body": "proxy_on_request_body",
            "on_http_request_trailers": "proxy_on_request_trailers", "on_http_response_trailers": "proxy_on_response_trailers"}


def test_module_exports():
    """scripts/build.sh removes the SDK's exports of callbacks the filter does not implement
    (each costs a VM entry per request in Envoy); the ones it implements stay: a callback
    implemented in src/proxy_wasm but pruned (or pruned in build.sh but implemented) fails here."""
    exports = wasm_exports(WASM.read_bytes())
    used = {"proxy_on_context_create", "proxy_on_request_headers", "proxy_on_response_headers",
            "proxy_on_response_body", "proxy_on_http_call_response", "proxy_on_delete",
            "proxy_on_configure", "proxy_on_tick", "proxy_on_memory_allocate", "proxy_abi_version_0_2_1"}
    assert used <= exports, used - exports
    source = "".join(p.read_text() for p in (ROOT / "src/proxy_wasm").glob("*.rs"))
    for callback, export in PRUNABLE.items():
        implemented = f"fn {callback}(" in source
        assert (export in exports) == implemented, f"{callback} implemented={implemented} but {export} exported={export in exports}"
