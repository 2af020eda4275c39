"""It keeps serving under faults of the error service, of the request around it,
and when the VM itself traps. Each case is listed in docs/faults.md."""

import socket
import subprocess
import time

import pytest

from harness import ROOT
from servers import RawErrorService

FALLBACK = b"502 Bad Gateway"


def policy(timeout=400, cache=300):
    return {"errorService": {"cluster": "error_pages", "timeoutMs": timeout, "maxBodyBytes": 1000, "cacheTtlSeconds": cache},
            "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx", "404"], "path": "/e.html"}]}}


RAW = {
    "reset mid-body": (b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 500\r\n\r\npartial", False),
    "content-length longer than body, kept open": (b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 500\r\n\r\npartial", True),
    "no content-length, kept open": (b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\n\r\nbody without end", True),
    "NUL inside a header": (b"HTTP/1.1 200 OK\r\nx-bad: a\x00b\r\ncontent-length: 4\r\n\r\nbody", False),
    "non-UTF-8 header bytes": (b"HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=\xff\xfe\r\ncontent-length: 4\r\n\r\nbody", False),
    "garbage instead of HTTP": (b"\x00\xff\xfe not http at all\r\n\r\n", False),
    "accept then hang": (None, True),
    "5xx": (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown", False),
    "over maxBodyBytes": (b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 5000\r\n\r\n" + b"x" * 5000, False),
}


@pytest.mark.parametrize("case", list(RAW))
def test_error_service_fault_ends_in_fallback_uncached(start_envoy, case):
    raw, keep_open = RAW[case]
    svc = RawErrorService(raw, keep_open=keep_open)
    try:
        e = start_envoy(policy(), error_service=svc)
        for attempt in (1, 2):
            t0 = time.monotonic()
            r = e.request("/status/502")
            assert r.status == 502 and FALLBACK in r.body, (case, r)
            assert r.header("set-cookie") is None and r.header("x-bad") is None
            assert time.monotonic() - t0 < 5  # bounded by timeoutMs, never a hang
            # nothing cached: every error asks the error service again
            assert svc.count >= attempt, (case, svc.count)
        assert e.counter("fallback", 2) == 2
        assert e.counter("cache_hit", 0) == 0
        assert "panicked" not in e.log_text()
    finally:
        svc.stop()


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\ncontent-type: text/html\nset-cookie: evil=1\r\ncontent-length: 4\r\n\r\nbody",
    b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nx-bad: a\rset-cookie: evil=1\r\ncontent-length: 4\r\n\r\nbody",
], ids=["bare LF", "bare CR"])
def test_error_service_cr_lf_cannot_inject_a_header(start_envoy, raw):
    # Envoy's codec reads a bare LF as a line end and sanitises a bare CR: what reaches the
    # filter is well-formed headers, and only content-type and cache-control are ever copied.
    svc = RawErrorService(raw)
    try:
        e = start_envoy(policy(), error_service=svc)
        r = e.request("/status/502")
        assert (r.status, r.body, r.header("content-type")) == (502, b"body", "text/html"), r
        assert r.header("set-cookie") is None and r.header("x-bad") is None
    finally:
        svc.stop()


def test_client_disconnect_while_fetching(start_envoy, errors):
    errors.pages["/e.html"] = {"body": "late page", "delay_ms": 300}
    e = start_envoy(policy(timeout=2000))
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", e.port))
        s.sendall(b"GET /status/503 HTTP/1.1\r\nhost: www.test\r\n\r\n")
        time.sleep(0.02)
        s.close()  # gone before the error object arrives
    # Envoy and the VM are fine: the next error is answered (the object may now be cached)
    r = e.request("/status/503")
    assert (r.status, r.body) == (503, b"late page")
    assert "panicked" not in e.log_text() and "Function: proxy_on" not in e.log_text()
    assert e.stats("wasm.custom_error_pages").get("wasm.custom_error_pages.vm_reload", 0) == 0


# The page comes late, so that Envoy sees the upstream break while the filter still holds
# the headers for it (a page back first would have gone out to ride the body that breaks).
SLOW_PAGE = {"body": "page", "delay_ms": 300}


def test_upstream_reset_mid_body(start_envoy, errors):
    errors.pages["/e.html"] = SLOW_PAGE
    e = start_envoy(policy(timeout=1000))
    # The upstream breaks after its headers while the filter holds them to fetch the page:
    # Envoy answers 502 itself and sends that reply straight to the client, past the filter
    # chain (Envoy does so for any reply once a filter holds response headers; docs/faults.md).
    # What must hold: a complete response, nothing of the original body, no crash.
    r = e.request("/status/500?reset_mid_body=1")
    assert r.status == 502, r
    assert b"partial body" not in r.body and b"s3cr3t" not in r.body, r
    r = e.request("/status/500")
    assert (r.status, r.body) == (500, b"page")
    assert "panicked" not in e.log_text()


# Envoy's own `local_reply_config` brands the replies the filter cannot see coming; a
# `response_flag_filter` keeps it to Envoy's upstream failures, off the filter's own pages.
ENVOYS_MAPPER = {"mappers": [{
    "filter": {"response_flag_filter": {"flags": ["UR", "UPE", "UC", "UF", "UH", "SI"]}},
    "body": {"inline_string": "<h1>branded by Envoy's local_reply_config</h1>"},
    "body_format_override": {"text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                             "content_type": "text/html; charset=utf-8"},
}]}


def with_local_reply_config(config):
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["local_reply_config"] = ENVOYS_MAPPER


def test_envoys_local_reply_config_brands_the_reset_the_filter_cannot_see(start_envoy, errors):
    errors.pages["/e.html"] = SLOW_PAGE
    e = start_envoy(policy(timeout=1000), customize=with_local_reply_config)
    r = e.request("/status/500?reset_mid_body=1")
    assert (r.status, r.body) == (502, b"<h1>branded by Envoy's local_reply_config</h1>"), r
    # ...and leaves the filter's own pages alone (in place, and as a local reply for HEAD).
    assert (e.request("/status/500").status, e.request("/status/500").body) == (500, b"page")
    assert e.request("/status/500", method="HEAD").status == 500
    r = e.request("/dead")  # Envoy's 503 for a connect failure, replaced by the filter
    assert (r.status, r.body) == (503, b"page"), r


def test_informational_response_before_the_error(start_envoy, errors):
    errors.pages["/e.html"] = {"body": "page"}
    e = start_envoy(policy())
    r = e.request("/status/503?early=103")
    assert (r.status, r.body) == (503, b"page"), r


def curl(*args):
    out = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code} %{http_version}", *args], capture_output=True, timeout=20)
    body, _, meta = out.stdout.rpartition(b"\n")
    return body, meta.decode()


def test_http2_downstream(start_envoy, errors):
    errors.pages["/e.html"] = {"body": "page over h2"}
    e = start_envoy(policy())
    body, meta = curl("--http2-prior-knowledge", f"http://127.0.0.1:{e.port}/status/502")
    assert (body, meta) == (b"page over h2", "502 2"), (body, meta)
    body, meta = curl("--http2-prior-knowledge", "-I", f"http://127.0.0.1:{e.port}/status/502")
    assert meta == "502 2" and b"content-type: text/html" in body.lower(), (body, meta)
    body, meta = curl("--http2-prior-knowledge", f"http://127.0.0.1:{e.port}/dead")
    assert (body, meta) == (b"page over h2", "503 2"), (body, meta)
    body, meta = curl("--http1.1", f"http://127.0.0.1:{e.port}/status/502")
    assert (body, meta) == (b"page over h2", "502 1.1")


def test_websocket_upgrade_untouched(start_envoy, errors):
    e = start_envoy(policy())
    s = socket.create_connection(("127.0.0.1", e.port), timeout=5)
    s.sendall(b"GET /ws HTTP/1.1\r\nhost: www.test\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
              b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1024)
    assert head.startswith(b"HTTP/1.1 101"), head
    s.sendall(b"ping")
    assert s.recv(1024) == b"echo:ping"
    s.close()
    assert e.counter("intercepted", 0) == 0


@pytest.fixture(scope="session")
def trap_wasm():
    """The module built with the test-only `trap-test` feature, in its own target dir."""
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1", "--features", "trap-test",
                    "--target-dir", "target/trap"], cwd=ROOT, check=True)
    return ROOT / "target/trap/wasm32-wasip1/release/custom_error_pages.wasm"


def test_the_shipped_module_refuses_the_trap_field(start_envoy):
    e = start_envoy(dict(policy(), testTrapOnPath="/trap/status/500"), expect_ready=False)
    assert "testTrapOnPath: unknown field" in e.log_text()


@pytest.mark.one_worker
@pytest.mark.wasm_only(reason='a trap in the wasm VM and FAIL_RELOAD; the dynamic module catches panics in each hook')
def test_trap_is_followed_by_recovery(start_envoy, errors, trap_wasm):
    errors.pages["/e.html"] = {"body": "page"}
    e = start_envoy(dict(policy(), testTrapOnPath="/trap/status/500"), wasm=trap_wasm)
    assert e.request("/status/500").body == b"page"
    try:
        r = e.request("/trap/status/500", timeout=10)
        assert r.status >= 500  # the trapped request fails; it does not hang
    except (ConnectionError, OSError):
        pass  # or its connection is reset
    assert "deliberate trap" in e.log_text()
    # FAIL_RELOAD: a fresh VM takes over (after Envoy's reload backoff), not a permanent 503
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = e.request("/status/500")
        if r.body == b"page":
            break
        time.sleep(0.2)
    assert (r.status, r.body) == (500, b"page"), r
    assert e.stats("wasm.custom_error_pages").get("wasm.custom_error_pages.vm_reload_success", 0) >= 1


@pytest.fixture(scope="session")
def trap_native():
    """The dynamic module built with the test-only `trap-test` feature, in its own target dir."""
    subprocess.run(["cargo", "build", "--quiet", "--profile", "native", "--lib", "--features", "native,trap-test",
                    "--target-dir", "target/trap"], cwd=ROOT, check=True)
    return ROOT / "target/trap/native"


@pytest.mark.native_only(reason="the dynamic module catches a panic in the hook that raised it")
def test_a_panic_in_a_hook_is_contained(start_envoy, errors, trap_native):
    errors.pages["/e.html"] = {"body": "page"}
    e = start_envoy(dict(policy(), testTrapOnPath="/trap/status/500"), native_dir=trap_native)
    assert e.request("/status/500").body == b"page"
    # The hook that panicked answers as if the filter were not there: the original response.
    r = e.request("/trap/status/500")
    assert r.status == 500 and r.body != b"page", r
    assert "deliberate trap" in e.log_text()
    # Envoy and the filter go on: the next error is served its page.
    for _ in range(3):
        assert e.request("/status/500").body == b"page"
    assert e.proc.poll() is None


def test_connect_is_never_touched(start_envoy):
    e = start_envoy({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["4xx", "5xx"], "body": "branded"}]}})
    s = socket.create_connection(("127.0.0.1", e.port), timeout=5)
    s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
    data = b""
    s.settimeout(2)
    try:
        while True:  # everything Envoy sends, until it closes or goes quiet
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    finally:
        s.close()
    # Envoy refuses the tunnel itself (no CONNECT route); the filter leaves that answer alone
    assert data.startswith(b"HTTP/1.1 4") or data == b"", data
    assert b"branded" not in data
    # twin: the same policy brands an ordinary 404
    assert e.request("/status/404").body == b"branded"
