"""What shared caches in front of the proxy may store, proven with a real one: Debian's
nginx with `proxy_cache` in front of the real Envoy. A replacement chosen from `Accept`
says `Vary: Accept`; a page served as a success is not kept as the URL's answer unless
the rule or the object says so; a rule's headers replace the object's, never append."""

import http.client
import os
import shutil
import subprocess
import time

import pytest

from harness import stop_process
from servers import free_port

SVC = {"cluster": "error_pages", "authority": "errors.internal", "timeoutMs": 500}
POLICY = {
    "errorService": SVC,
    "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404"], "path": "/errors/404.html",
         "variants": [{"contentType": "application/json", "path": "/errors/404.json"}]},
        {"matchResponseCodes": ["503"], "path": "/errors/maintenance.html", "overrideResponseCode": 200},
        {"matchResponseCodes": ["502"], "path": "/errors/cached.html", "overrideResponseCode": 200,
         "headers": {"cache-control": "public, max-age=5", "vary": "Origin"}},
        {"matchResponseCodes": ["410"], "path": "/errors/410.html"},
        {"matchResponseCodes": ["403"], "path": "/errors/{lang}/403.html", "languages": ["en", "de"],
         "variants": [{"contentType": "application/json", "path": "/errors/403.json"}]},
    ]},
}
YEAR = [("cache-control", "public, max-age=3600")]


def nginx_conf(workdir, port, envoy_port):
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the test's folder
    temps = "".join(f"    {k}_temp_path {workdir}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {workdir}/access.log;
{temps}    proxy_cache_path {workdir}/cache keys_zone=shared:1m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{envoy_port};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_cache shared;
            # Anything without a cache-control of its own is kept a minute, as a CDN with
            # negative caching would: only what the response says keeps it out.
            proxy_cache_valid any 1m;
            add_header x-cache $upstream_cache_status always;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, workdir, envoy_port):
        self.workdir = workdir
        self.port = free_port()
        (workdir / "nginx.conf").write_text(nginx_conf(workdir, self.port, envoy_port))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", str(workdir / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.log()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.connect()
                c.close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx not ready: {self.log()}")

    def log(self):
        p = self.workdir / "error.log"
        return p.read_text(errors="replace")[-5000:] if p.exists() else ""

    def stop(self):
        stop_process(self.proc)


@pytest.fixture
def cached(start_envoy, errors, tmp_path, request):
    errors.pages["/errors/404.html"] = {"body": "<h1>not found</h1>", "headers": YEAR}
    errors.pages["/errors/404.json"] = {"body": '{"error":"not_found"}', "ct": "application/json", "headers": YEAR}
    errors.pages["/errors/maintenance.html"] = {"body": "<h1>back soon</h1>"}
    errors.pages["/errors/cached.html"] = {"body": "<h1>cached</h1>", "headers": YEAR}
    errors.pages["/errors/410.html"] = {"body": "<h1>gone</h1>"}
    errors.pages["/errors/en/403.html"] = {"body": "<h1>forbidden</h1>", "headers": YEAR}
    errors.pages["/errors/de/403.html"] = {"body": "<h1>verboten</h1>", "headers": YEAR}
    errors.pages["/errors/403.json"] = {"body": '{"error":"forbidden"}', "ct": "application/json", "headers": YEAR}
    envoy = start_envoy(POLICY)
    d = tmp_path / "nginx"
    d.mkdir()
    nginx = Nginx(d, envoy.port)
    yield envoy, nginx
    nginx.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(f"----- nginx error log -----\n{nginx.log()}")


def test_each_kind_of_client_gets_its_own_representation(cached):
    envoy, nginx = cached
    browser = {"accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"}
    api = {"accept": "application/json"}
    first = envoy.request("/status/404", headers=browser, port=nginx.port)
    assert first.status == 404 and first.body == b"<h1>not found</h1>", first
    assert first.header("vary") == "Accept"
    assert first.header("x-cache") == "MISS"
    again = envoy.request("/status/404", headers=browser, port=nginx.port)
    assert again.header("x-cache") == "HIT" and again.body == first.body, "the cache does keep the page"
    other = envoy.request("/status/404", headers=api, port=nginx.port)
    assert other.status == 404 and other.body == b'{"error":"not_found"}', other
    assert other.header("content-type") == "application/json" and other.header("vary") == "Accept"
    # A response with no variants negotiated nothing: no Vary, and one cached copy for all.
    plain = envoy.request("/status/410", headers=browser, port=nginx.port)
    assert plain.body == b"<h1>gone</h1>" and plain.header("vary") is None, plain
    assert envoy.request("/status/410", headers=api, port=nginx.port).header("x-cache") == "HIT"


def test_each_language_gets_its_own_page_and_the_cache_keeps_them_apart(cached):
    envoy, nginx = cached
    browser = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"
    german = {"accept": browser, "accept-language": "de-CH,de;q=0.9,en;q=0.5"}
    english = {"accept": browser, "accept-language": "en-US"}
    first = envoy.request("/status/403", headers=german, port=nginx.port)
    assert (first.status, first.body) == (403, b"<h1>verboten</h1>"), first
    assert first.header("vary") == "Accept, Accept-Language" and first.header("x-cache") == "MISS"
    again = envoy.request("/status/403", headers=german, port=nginx.port)
    assert (again.body, again.header("x-cache")) == (b"<h1>verboten</h1>", "HIT")
    # An English-only client never gets the German copy the cache holds.
    en = envoy.request("/status/403", headers=english, port=nginx.port)
    assert (en.status, en.body, en.header("x-cache")) == (403, b"<h1>forbidden</h1>", "MISS"), en
    assert envoy.request("/status/403", headers=english, port=nginx.port).body == b"<h1>forbidden</h1>"
    assert envoy.request("/status/403", headers=german, port=nginx.port).body == b"<h1>verboten</h1>"
    # No Accept-Language: the first language, the default.
    plain = envoy.request("/status/403", headers={"accept": browser})
    assert plain.body == b"<h1>forbidden</h1>"
    # The JSON variant has no {lang}: one object, and still the language's Vary.
    api = envoy.request("/status/403", headers={"accept": "application/json", "accept-language": "de"})
    assert (api.body, api.header("vary")) == (b'{"error":"forbidden"}', "Accept, Accept-Language")


def test_head_of_a_negotiated_reply_says_vary(cached):
    envoy, _ = cached
    r = envoy.request("/status/404", method="HEAD", headers={"accept": "application/json"})
    assert r.status == 404 and r.header("content-type") == "application/json", r
    assert r.headers.get("vary") == ["Accept"], r


def test_maintenance_page_is_not_kept_after_the_backend_recovers(cached, upstream):
    envoy, nginx = cached
    upstream.pages["/shop"] = {"status": 503, "body": "backend down"}
    down = envoy.request("/shop", port=nginx.port)
    assert down.status == 200 and down.body == b"<h1>back soon</h1>", down
    assert down.headers.get("cache-control") == ["no-store"], down
    upstream.pages["/shop"] = {"status": 200, "body": "welcome back"}
    up = envoy.request("/shop", port=nginx.port)
    assert up.status == 200 and up.body == b"welcome back", up


def test_rule_headers_replace_the_objects(cached, upstream):
    envoy, nginx = cached
    r = envoy.request("/status/502", headers={"accept": "text/html"})
    assert r.status == 200 and r.body == b"<h1>cached</h1>", r
    assert r.headers.get("cache-control") == ["public, max-age=5"], r
    assert r.headers.get("vary") == ["Origin"], r
    # Through the cache: kept as the rule says.
    upstream.pages["/promo"] = {"status": 502, "body": "bad gateway"}
    assert envoy.request("/promo", port=nginx.port).header("x-cache") == "MISS"
    upstream.pages["/promo"] = {"status": 200, "body": "promo"}
    kept = envoy.request("/promo", port=nginx.port)
    assert kept.header("x-cache") == "HIT" and kept.body == b"<h1>cached</h1>", kept
