"""What users try with envoy/docker-compose.yaml, on a real Docker engine, for each build: the
sample tour, the error service's container stopped, the backend's container stopped, Envoy
restarted with an edited policy, and a rebuilt module. The tests of one build share one stack
and run in this order; a test that stops a container starts it again."""

import os

import pytest
from checks import request, run

BRANDED_404 = b"We couldn't find that page"
GENERIC_404 = b"<h1>404 Not Found</h1>"
BACKEND_BODY = b"backend error page"


def test_sample_tour(stack):
    """Every check of envoy/checks.py against the published ports."""
    results = run(stack.base, stack.admin)
    for what, ok in results:
        print(f"{stack.build}: {'ok  ' if ok else 'FAIL'} {what}")
    assert [what for what, ok in results if not ok] == []
    assert len(results) == 18


def test_error_service_container_stopped(stack):
    """The error service's container stopped after the tour: each 404 is still a 404 with no
    trace of the backend's page, and the branded page (`outcome=cache`): both builds prewarmed
    it when Envoy started (the wasm build in every worker's VM, the dynamic module on Envoy's
    main thread for every worker), so no reply depends on the error service now."""
    before = stack.counters()
    stack.compose("stop", "errors")
    try:
        replies = {}
        for i in range(8):
            rid = f"{stack.build}-errors-down-{i}"
            status, _, body = request(stack.base, "/status/404", headers={"x-request-id": rid})
            assert status == 404 and BACKEND_BODY not in body
            replies[rid] = body
        lines = stack.access_log(*replies)
        assert len(lines) == len(replies)
        for rid, line in lines.items():
            assert "outcome=cache" in line and BRANDED_404 in replies[rid], line
        after = stack.counters()
        assert after.get("fallback", 0) == before.get("fallback", 0), after
        failed = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith("fetch_failed."))
        assert failed == 0, after
    finally:
        stack.compose("start", "errors")
        stack.wait_ready()


def test_backend_container_stopped(stack):
    """The backend's container stopped: Envoy's own 503 (connection refused) gets the policy's
    maintenance page and its retry-after."""
    stack.compose("stop", "backend")
    try:
        status, headers, body = request(stack.base, "/anything", headers={"x-request-id": f"{stack.build}-backend-down"})
        assert status == 503 and b"We'll be right back" in body and headers.get("retry-after") == "120"
        line = stack.access_log(f"{stack.build}-backend-down")[f"{stack.build}-backend-down"]
        assert "original=503" in line and "connection_failure" in line, line
    finally:
        stack.compose("start", "backend")
        stack.wait_ready()


def test_envoy_restarted_with_an_edited_policy(stack):
    """The policy edited in the mounted configuration, then only Envoy's container restarted:
    the new policy serves, and the backend and the error service are still reachable (they
    share the `net` service's namespace, not Envoy's)."""
    text = stack.config.read_text()
    assert text.count('"retry-after": "120"') == 1
    stack.config.write_text(text.replace('"retry-after": "120"', '"retry-after": "600"'))
    stack.restart("envoy")
    status, headers, body = request(stack.base, "/dead")
    assert status == 503 and headers.get("retry-after") == "600" and b"We'll be right back" in body
    status, _, body = request(stack.base, "/status/404")
    assert status == 404 and BRANDED_404 in body


def replace_module(path, data):
    """As scripts/build.sh does: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_module_rebuilt_and_envoy_restarted(stack):
    """A rebuilt module replaces the old file (a new inode) and Envoy's container is restarted:
    Envoy loads the new one. The stand-in rebuild is the same module with its response-headers
    callback export renamed, so Envoy never calls the filter on responses and errors pass
    untouched; putting the real module back brings the pages back."""
    if stack.build != "wasm":
        pytest.skip("the dynamic module's file is mounted the same way (target/); the wasm module stands for both")
    module = stack.dir / "target/wasm32-wasip1/release/custom_error_pages.wasm"
    original = module.read_bytes()
    callback = b"proxy_on_response_headers"
    assert original.count(callback) == 1
    replace_module(module, original.replace(callback, b"proxy_on_response_headerX"))
    stack.restart("envoy")
    status, _, body = request(stack.base, "/status/404")
    assert status == 404 and BACKEND_BODY in body
    replace_module(module, original)
    stack.restart("envoy")
    status, _, body = request(stack.base, "/status/404")
    assert status == 404 and BRANDED_404 in body
