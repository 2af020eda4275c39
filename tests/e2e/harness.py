"""Starts the real Envoy with the built filter, a test upstream and a test error service,
all on loopback; polls readiness (admin /ready, never a fixed sleep); tears everything
down and dumps Envoy's log when a test fails."""

import http.client
import json
import os
import subprocess
import time
from pathlib import Path

from servers import dead_port, free_port

ROOT = Path(__file__).resolve().parents[2]
WASM = Path(os.environ.get("FILTER_WASM", ROOT / "target/wasm32-wasip1/release/custom_error_pages.wasm"))
ENVOY = os.environ.get("ENVOY_BIN", str(ROOT / ".tools/envoy"))
# Which build of the filter the suite runs against: "wasm" (the proxy-wasm module, the
# default) or "native" (the Envoy dynamic module, `make e2e-native`).
BUILD = os.environ.get("FILTER_BUILD", "wasm")
NATIVE_DIR = Path(os.environ.get("FILTER_NATIVE_DIR", ROOT / "target/release"))
# The filter's name in the chain (the key of a route's `typed_per_filter_config`) and its
# config type, per build.
FILTER_NAME = {"wasm": "envoy.filters.http.wasm", "native": "custom_error_pages"}[BUILD]
FILTER_TYPE = {"wasm": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
               "native": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"}[BUILD]
# Where each build's counters appear in Envoy's stats.
COUNTER_PREFIX = {"wasm": "wasmcustom.", "native": "dynamicmodulescustom."}[BUILD]
# Envoy worker threads (one wasm VM, with its own cache, per worker): `make e2e-workers`
# runs the suite with 2.
CONCURRENCY = os.environ.get("ENVOY_CONCURRENCY", "1")

ACCESS_LOG_FORMAT = (
    "%REQ(:METHOD)% %REQ(:PATH)% code=%RESPONSE_CODE% details=%RESPONSE_CODE_DETAILS% "
    "%FILTER_STATE(wasm.custom_error:PLAIN)%\n"
)


def filter_under_test(policy, vm_id="custom_error_pages", wasm=None):
    """The filter under test with `policy`: the proxy-wasm module (always, when `wasm`
    names a module file), or with FILTER_BUILD=native the dynamic module (same policy
    JSON, as `filter_config`)."""
    if BUILD == "native" and wasm is None:
        return native_filter(policy)
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "custom_error_pages",
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm or WASM)}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": policy if isinstance(policy, str) else json.dumps(policy),
                },
                "failure_policy": "FAIL_RELOAD",
            },
        },
    }


def native_filter(policy):
    return {
        "name": "custom_error_pages",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"name": "custom_error_pages"},
            "filter_name": "custom_error_pages",
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": policy if isinstance(policy, str) else json.dumps(policy),
            },
        },
    }


def hcm_of(config):
    """The HTTP connection manager of the (first) listener, to adjust routes and filters."""
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def cluster(name, port, connect_timeout="0.25s"):
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }


def routes():
    return [
        {"name": "dead-route", "match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"name": "slow-route", "match": {"prefix": "/slow"}, "route": {"cluster": "upstream", "timeout": "0.3s", "prefix_rewrite": "/status/200?delay_ms=1500&"}},
        {"name": "timed-route", "match": {"prefix": "/timed/"}, "route": {"cluster": "upstream", "timeout": "1s", "prefix_rewrite": "/"}},
        {"name": "checkout", "match": {"prefix": "/checkout"}, "route": {"cluster": "upstream"}},
        {"name": "local-403", "match": {"prefix": "/forbidden"}, "direct_response": {"status": 403, "body": {"inline_string": "denied by proxy"}}},
        {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "upstream"}},
    ]


def envoy_config(policy, admin_port, listener_port, upstream_port, errors_port, access_log, wasm=None):
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "access_log": [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(access_log),
                "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
            },
        }],
        "route_config": {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes()}]},
        "http_filters": [
            filter_under_test(policy, wasm=wasm),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
            }],
            "clusters": [
                cluster("upstream", upstream_port),
                cluster("error_pages", errors_port),
                cluster("dead", dead_port()),
            ],
        },
    }


def stop_process(proc):
    """Terminates a process the tests started (killed if it does not go within 10 s)."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> list of values
        self.body = body

    def header(self, name):
        v = self.headers.get(name.lower())
        return v[0] if v else None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return f"<{self.status} {self.headers} {self.body[:200]!r}>"


class Envoy:
    def __init__(self, workdir, policy, upstream, errors, config=None, wasm=None, customize=None, native_dir=None):
        self.workdir = Path(workdir)
        self.admin_port = free_port()
        self.port = free_port()
        self.access_log = self.workdir / "access.log"
        self.log = self.workdir / "envoy.log"
        self.config = config or envoy_config(policy, self.admin_port, self.port, upstream.port, errors.port, self.access_log, wasm)
        if customize:
            customize(self.config)
        self.concurrency = CONCURRENCY
        self.native_dir = native_dir or NATIVE_DIR
        self.proc = None

    def start(self, expect_ready=True, timeout=60):
        cfg = self.workdir / "envoy.json"
        cfg.write_text(json.dumps(self.config, indent=1))
        self.logfile = open(self.log, "wb")
        env = dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(self.native_dir))
        self.proc = subprocess.Popen(
            [ENVOY, "-c", str(cfg), "--concurrency", self.concurrency, "--disable-hot-restart", "-l", "info",
             "--component-log-level", os.environ.get("ENVOY_COMPONENT_LOG", "wasm:debug,dynamic_modules:debug")],
            stdout=self.logfile, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if expect_ready:
                    raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.log_text()}")
                return False
            if self._ready():
                return True
            time.sleep(0.05)
        raise RuntimeError(f"envoy not ready within {timeout}s:\n{self.log_text()}")

    def wait_exit(self, timeout=60):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _ready(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=1)
            c.request("GET", "/ready")
            ok = c.getresponse().status == 200
            c.close()
            return ok
        except OSError:
            return False

    def request(self, path, method="GET", host="www.test", headers=None, port=None, timeout=10):
        c = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=timeout)
        try:
            h = {"host": host}
            h.update(headers or {})
            c.request(method, path, headers=h)
            r = c.getresponse()
            body = r.read()
            hs = {}
            for k, v in r.getheaders():
                hs.setdefault(k.lower(), []).append(v)
            return Response(r.status, hs, body)
        finally:
            c.close()

    def admin(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        c.request("GET", path)
        body = c.getresponse().read().decode()
        c.close()
        return body

    def stats(self, contains=""):
        out = {}
        for line in self.admin(f"/stats?filter={contains}").splitlines():
            k, _, v = line.partition(": ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def counter(self, name, expect, timeout=3.0):
        """The filter adds its counts to Envoy's stats on a 100 ms tick: poll until the
        counter shows `expect` (for 0, until it has stayed 0 past three ticks)."""
        deadline = time.monotonic() + (0.35 if expect == 0 else timeout)
        while True:
            value = self.stats(name).get(f"{COUNTER_PREFIX}custom_error_pages.{name}", 0)
            if (value == expect and expect != 0) or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def access_lines(self):
        # The file access log flushes on a timer; poll for the line instead of sleeping.
        try:
            return self.access_log.read_text().splitlines()
        except OSError:
            return []

    def wait_access_line(self, needle, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.access_lines():
                if needle in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no access log line with {needle!r}: {self.access_lines()}")

    def stop(self):
        stop_process(self.proc)
        if getattr(self, "logfile", None):
            self.logfile.close()
