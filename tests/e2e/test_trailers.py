"""Every way a response can end: an upstream error whose HTTP/2 response ends with a trailer
block instead of a last body chunk still gets its page, in both builds; a success with
trailers, and gRPC (left alone by content-type), keep their body and trailers. Listed in
docs/faults.md."""

import time

import pytest
from h2upstream import BODY, add_h2_route, h2_get

POLICY = {
    "errorService": {"cluster": "error_pages", "timeoutMs": 2000, "prewarm": False},
    "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404"], "path": "/e/404.html"},
        {"matchResponseCodes": ["503"], "body": "inline 503 page", "contentType": "text/plain"},
    ]},
}


def h2_route(port):
    return lambda config: add_h2_route(config, port)


def get(envoy, path):
    """(status, body, trailers) of an HTTP/2 request through Envoy."""
    status, _, body, trailers = h2_get(envoy.port, path)
    return status, body, trailers


@pytest.fixture
def envoy(start_envoy, errors, h2_upstream):
    errors.pages["/e/404.html"] = {"body": "branded 404"}
    return start_envoy(POLICY, customize=h2_route(h2_upstream.port))


@pytest.mark.one_worker  # counts one worker's cache
@pytest.mark.parametrize("attempt", ["fetched", "cached"])
def test_an_error_ending_with_trailers_gets_its_page(envoy, errors, attempt):
    url = "/h2/missing?status=404&trailers=1"
    if attempt == "cached":
        assert get(envoy, url)[:2] == (404, b"branded 404")
    status, body, _ = get(envoy, url)
    assert (status, body) == (404, b"branded 404")
    assert len(errors.requests_to("/e/404.html")) == 1, "fetched once, then from the cache"
    expected = ["fetched", "cache"] if attempt == "cached" else ["fetched"]
    deadline = time.monotonic() + 20
    while True:
        outcomes = [line.split(" outcome=")[1].split()[0] for line in envoy.access_lines() if "/h2/missing" in line]
        if len(outcomes) >= len(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert outcomes == expected


def test_an_error_ending_with_trailers_gets_an_inline_page_over_http1(envoy):
    r = envoy.request("/h2/down?status=503&trailers=1")
    assert (r.status, r.body) == (503, b"inline 503 page")
    assert r.header("content-type") == "text/plain"


def test_an_error_ending_with_its_last_chunk_gets_its_page(envoy):
    status, body, _ = get(envoy, "/h2/missing?status=404&trailers=0")
    assert (status, body) == (404, b"branded 404")


def test_a_success_with_trailers_keeps_its_body_and_trailers(envoy):
    status, body, trailers = get(envoy, "/h2/fine?status=200&trailers=1")
    assert (status, body) == (200, BODY)
    assert trailers == {"x-checksum": "abc123"}


def test_an_error_no_rule_covers_keeps_its_body_and_trailers(envoy):
    status, body, trailers = get(envoy, "/h2/gone?status=410&trailers=1")
    assert (status, body) == (410, BODY)
    assert trailers == {"x-checksum": "abc123"}


def test_grpc_errors_travel_untouched(envoy):
    status, body, trailers = get(envoy, "/h2/rpc?status=404&trailers=1&ct=application/grpc")
    assert (status, body) == (404, BODY)
    assert trailers == {"x-checksum": "abc123"}
