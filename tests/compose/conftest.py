"""The docker-compose stack of envoy/docker-compose.yaml, run on a real Docker engine with the
local stand-in images (scripts/compose-images.sh writes their names to
.tools/compose/images.env). Each build gets its own stack, started from a copy of envoy/ and
of the built modules (so a test may edit the policy or replace the module as a user would,
without touching the repository), on free loopback ports; readiness is polled, never slept
for; `docker compose down -v` runs always, and every container's log is printed when a test
fails."""

import http.client
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "envoy"))
sys.path.insert(0, str(ROOT / "tests/e2e"))

from servers import free_port  # noqa: E402

WASM = "target/wasm32-wasip1/release/custom_error_pages.wasm"
NATIVE = "target/release/libcustom_error_pages.so"
CONFIG = {"wasm": "envoy.yaml", "native": "envoy.native.yaml"}


def compose_command():
    """Compose v2 (`docker compose`) where the plugin is installed, else the standalone
    `docker-compose` (v1, as Debian 12 packages it)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"], True
    return ["docker-compose"], False


def images():
    env_file = ROOT / ".tools/compose/images.env"
    if not env_file.exists():
        pytest.fail("no stand-in images: run scripts/compose-images.sh (make compose-test does)")
    return dict(line.split("=", 1) for line in env_file.read_text().split())


class Stack:
    def __init__(self, tmp, build):
        self.build = build
        self.dir = tmp / "project"
        shutil.copytree(ROOT / "envoy", self.dir / "envoy")
        for module in (WASM, NATIVE):
            (self.dir / module).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / module, self.dir / module)
        self.config = self.dir / "envoy" / CONFIG[build]
        self.port, self.admin_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.env = dict(os.environ, **images(), ENVOY_PORT=str(self.port), ADMIN_PORT=str(self.admin_port),
                        ENVOY_CONFIG=CONFIG[build])
        self.command, self.v2 = compose_command()
        self.project = f"cep-compose-{build}-{os.getpid()}"

    def compose(self, *args, check=True, timeout=120):
        cmd = [*self.command, "-p", self.project, "-f", str(self.dir / "envoy/docker-compose.yaml"), *args]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def up(self):
        self.compose("up", "-d", *(["--wait"] if self.v2 else []))
        self.wait_ready()

    def restart(self, service):
        self.compose("restart", service)
        self.wait_ready()

    def wait_ready(self, timeout=60):
        """Envoy's admin says LIVE, and the backend (8081) and the error service (8082)
        accept connections in the shared network namespace (probed from the `net` service,
        so no request goes through the filter)."""
        deadline = time.monotonic() + timeout
        probe = ["docker", "exec", self.container("net"), "bash", "-c",
                 "exec 3<>/dev/tcp/127.0.0.1/8081 && exec 4<>/dev/tcp/127.0.0.1/8082"]
        while True:
            live = self.admin_get("/ready") == "LIVE"
            if live and subprocess.run(probe, capture_output=True).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"stack not ready after {timeout} s:\n{self.logs()}")
            time.sleep(0.2)

    def admin_get(self, path):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=2)
            c.request("GET", path)
            return c.getresponse().read().decode().strip()
        except OSError:
            return None

    def counters(self):
        """The filter's counters by name (`fetch_failed.timeout`...), either build's prefix."""
        out = {}
        for line in (self.admin_get("/stats?filter=custom_error_pages") or "").splitlines():
            key, _, value = line.partition(": ")
            _, found, name = key.partition("custom.custom_error_pages.")
            if found and value.strip().isdigit():
                out[name] = int(value)
        return out

    def counter_reaches(self, name, value, timeout=5):
        """Counters reach Envoy's stats on the filter's tick or at a stream's end: polled."""
        deadline = time.monotonic() + timeout
        while self.counters().get(name, 0) < value and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.counters().get(name, 0)

    def container(self, service):
        """The container's id, for the docker commands that need no compose (a compose v1
        call costs about a second)."""
        return self.compose("ps", "-q", service).stdout.strip()

    def access_log(self, *request_ids, timeout=20):
        """Envoy's access-log line for each request id, polled: Envoy flushes its stdout log
        every 10 s by default (`--file-flush-interval-msec`), so ask for all ids at once."""
        deadline = time.monotonic() + timeout
        envoy = self.container("envoy")
        while True:
            out = subprocess.run(["docker", "logs", envoy], capture_output=True, text=True).stdout
            found = {rid: line for line in out.splitlines() for rid in request_ids if f"id={rid} " in line}
            if len(found) == len(request_ids):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no access-log line for {set(request_ids) - set(found)}")
            time.sleep(0.2)

    def logs(self):
        return self.compose("logs", "--no-color", check=False).stdout

    def down(self):
        self.compose("down", "-v", "--remove-orphans", check=False)


@pytest.fixture(scope="module", params=["wasm", "native"])
def stack(request, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp(request.param), request.param)
    try:
        s.up()
        yield s
    finally:
        s.down()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(autouse=True)
def logs_on_failure(request):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "stack" in request.fixturenames:
        print(request.getfixturevalue("stack").logs()[-20000:])

