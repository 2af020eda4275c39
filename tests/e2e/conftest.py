import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import BUILD, Envoy  # noqa: E402
from h2upstream import H2Upstream  # noqa: E402
from servers import ErrorServiceHandler, Running, UpstreamHandler  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "one_worker: counts what one Envoy worker does (fetches, upstream connections, VM reloads); "
        "`make e2e-workers` runs the rest of the suite with two workers",
    )
    config.addinivalue_line("markers", "wasm_only(reason): about the proxy-wasm build alone (skipped with FILTER_BUILD=native)")
    config.addinivalue_line("markers", "native_only(reason): about the dynamic module alone (skipped for the wasm build)")


def pytest_collection_modifyitems(config, items):
    """One suite, run once per build (FILTER_BUILD=wasm|native): a test that is about one
    build alone says why, and the other build's run skips it with that reason."""
    other = "native_only" if BUILD == "wasm" else "wasm_only"
    for item in items:
        mark = item.get_closest_marker(other)
        if mark:
            reason = mark.kwargs.get("reason") or (mark.args[0] if mark.args else other)
            item.add_marker(pytest.mark.skip(reason=f"{other}: {reason}"))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def upstream():
    s = Running(UpstreamHandler)
    yield s
    s.stop()


@pytest.fixture
def h2_upstream():
    """An HTTP/2 upstream whose responses may end with trailers (h2upstream.py)."""
    s = H2Upstream()
    yield s
    s.stop()


@pytest.fixture
def errors():
    s = Running(ErrorServiceHandler)
    yield s
    s.stop()


@pytest.fixture
def start_envoy(request, tmp_path, upstream, errors):
    """start_envoy(policy) -> a ready Envoy; stopped (and its log dumped on failure) after."""
    started = []

    def start(policy, expect_ready=True, config=None, error_service=None, wasm=None, customize=None, concurrency=None,
              native_dir=None):
        d = tmp_path / f"envoy{len(started)}"
        d.mkdir()
        e = Envoy(d, policy, upstream, error_service or errors, config=config, wasm=wasm, customize=customize,
                  native_dir=native_dir)
        if concurrency:
            e.concurrency = str(concurrency)
        started.append(e)
        e.start(expect_ready=expect_ready)
        return e

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for e in started:
        e.stop()
        if failed:
            print(f"----- envoy log ({e.log}) -----\n{e.log_text()[-20000:]}")
            print(f"----- access log -----\n" + "\n".join(e.access_lines()[-50:]))
