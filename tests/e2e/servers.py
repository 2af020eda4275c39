"""Loopback HTTP servers for the end-to-end tests: a test upstream that answers any
status, and a test error service whose pages, delays and failures each test sets.
Both record what they receive, so tests can assert what crossed the proxy."""

import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def process_request(self, request, client_address):
        self.owner.connections.append(request)  # so that `stop` also ends kept-alive ones
        super().process_request(request, client_address)


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _record(self):
        self.server.owner.requests.append(
            {"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        )

    def _send(self, status, body=b"", headers=(), chunked=False, chunk_delay=0.0, chunk_bytes=16384):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if chunked:
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for i in range(0, len(body), chunk_bytes):
                    part = body[i : i + chunk_bytes]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    if chunk_delay:
                        self.wfile.flush()
                        time.sleep(chunk_delay)
                self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)


class UpstreamHandler(_Base):
    def _raw_error(self, q, status):
        """Faults the http.server API cannot express, written by hand."""
        if "early" in q:  # an informational response before the final one
            self.wfile.write(b"HTTP/1.1 %s Early\r\nlink: </a.css>; rel=preload\r\n\r\n" % q["early"].encode())
            return False
        if "reset_mid_body" in q:
            self.wfile.write(b"HTTP/1.1 %d Error\r\ncontent-type: text/plain\r\ncontent-length: 100000\r\n\r\npartial body" % status)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return True
        return False

    def _websocket(self):
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        self.end_headers()
        self.wfile.flush()
        data = self.connection.recv(1024)
        self.connection.sendall(b"echo:" + data)
        self.close_connection = True

    """`owner.pages[path]` (dict(status, body, headers)) when the test set one; else
    `[/prefix]/status/NNN[?ct=..&bytes=N&chunked=1&chunk_bytes=N&chunk_delay_ms=N&delay_ms=N&empty=1]` answers NNN; anything
    else 200. Error responses carry headers that must never leak to the client."""

    def do_GET(self):
        self._record()
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if "delay_ms" in q:
            time.sleep(int(q["delay_ms"]) / 1000)
        if self.headers.get("upgrade", "").lower() == "websocket":
            self._websocket()
            return
        fixed = self.server.owner.pages.get(url.path)
        if fixed is not None:  # a page the test sets (and may change between requests)
            self._send(fixed.get("status", 200), fixed["body"].encode(), list(fixed.get("headers", [("content-type", "text/plain")])))
            return
        parts = url.path.strip("/").split("/")
        codes = [b for a, b in zip(parts, parts[1:]) if a == "status" and b.isdigit()]
        if codes:
            status = int(codes[0])
            if self._raw_error(q, status):
                return
            if "bytes" in q:
                body = b"U" * int(q["bytes"])
            elif "empty" in q:
                body = b""
            else:
                body = b"UPSTREAM-ERROR-BODY status=%d secret=s3cr3t" % status
            headers = [
                ("content-type", q.get("ct", "text/plain")),
                ("set-cookie", "session=upstream-secret"),
                ("x-upstream-secret", "leak"),
                ("retry-after", "7"),
                ("access-control-allow-origin", "https://app.example"),
            ]
            if status == 401:
                headers.append(("www-authenticate", 'Basic realm="test"'))
            self._send(status, body, headers, chunked="chunked" in q, chunk_delay=int(q.get("chunk_delay_ms", 0)) / 1000,
                       chunk_bytes=int(q.get("chunk_bytes", 16384)))
            return
        self._send(200, b"hello from upstream", [("content-type", "text/plain")])

    do_HEAD = do_GET
    do_POST = do_GET
    do_DELETE = do_GET


class ErrorServiceHandler(_Base):
    """Serves `owner.pages[path]`: dict(status, body, ct, headers, delay_ms, hang). Keeps the
    most requests it ever had in hand at once in `owner.most_at_once`."""

    def do_GET(self):
        owner = self.server.owner
        with owner.lock:
            owner.at_once += 1
            owner.most_at_once = max(owner.most_at_once, owner.at_once)
        self._in_hand = True
        try:
            self._answer()
        finally:
            self._let_go()

    def _let_go(self):
        # A request stops being in hand before its answer is written: once Envoy has the answer
        # it may send the next fetch on another connection, which must not count as overlapping.
        if self._in_hand:
            self._in_hand = False
            with self.server.owner.lock:
                self.server.owner.at_once -= 1

    def _answer(self):
        self._record()
        path = urlsplit(self.path).path
        page = self.server.owner.pages.get(path)
        if page is None:
            self._send(404, b"no such error page", [("content-type", "text/plain")])
            return
        if page.get("delay_ms"):
            time.sleep(page["delay_ms"] / 1000)
        if page.get("reset"):
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._let_go()
        headers = [("content-type", page.get("ct", "text/html; charset=utf-8"))]
        headers += list(page.get("headers", []))
        self._send(page.get("status", 200), page["body"].encode() if isinstance(page["body"], str) else page["body"], headers)


class SocketServer:
    """A loopback listener that hands each connection to `_answer` on its own thread;
    `stop` closes the listener and every connection it accepted."""

    def __init__(self):
        self.conns = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        raise NotImplementedError

    def stop(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


class RawErrorService(SocketServer):
    """An error service that answers every request with `raw` bytes verbatim (None: accept,
    read the request, then hang), then closes unless `keep_open`. Counts requests."""

    def __init__(self, raw, keep_open=False):
        self.raw, self.keep_open, self.count = raw, keep_open, 0
        super().__init__()

    def _answer(self, conn):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                _, buf = buf.split(b"\r\n\r\n", 1)
                self.count += 1
                if self.raw is None:
                    continue  # hang: never answer
                conn.sendall(self.raw)
                if not self.keep_open:
                    conn.shutdown(socket.SHUT_RDWR)
                    return
        except OSError:
            return



class Running:
    def __init__(self, handler, port=0):
        self.requests = []
        self.pages = {}
        self.lock = threading.Lock()
        self.at_once = self.most_at_once = 0
        self.connections = []
        self.handler = handler
        self._serve(port)

    def _serve(self, port):
        self.httpd = _Server(("127.0.0.1", port), self.handler)
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def start_again(self):
        """Back on the same port after `stop` (an outage that ends)."""
        self._serve(self.port)

    def requests_to(self, path):
        return [r for r in self.requests if urlsplit(r["path"]).path == path]

    def stop(self):
        """Down for real: the listener, and the connections Envoy keeps alive in its pool."""
        self.httpd.shutdown()
        self.httpd.server_close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.connections = []


def _ephemeral_start():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# Ports handed to processes that bind them later (Envoy's listener and admin) come from below
# the kernel's ephemeral range: a port bound and closed inside that range can be taken, before
# Envoy binds it, by any outgoing connection's local port (Envoy's own to its clusters, or a
# client's), which failed Envoy's start now and then with "Address already in use". Handed out
# in turn from an offset of the process id, so that two suites running at once rarely meet.
_PORTS_HIGH = _ephemeral_start()
_PORTS_LOW = max(1024, _PORTS_HIGH - 10000)
_next_port = [os.getpid() * 7919 % (_PORTS_HIGH - _PORTS_LOW)]


def free_port():
    """A loopback port nothing listens on now, outside the ephemeral range."""
    span = _PORTS_HIGH - _PORTS_LOW
    for _ in range(span):
        port = _PORTS_LOW + _next_port[0]
        _next_port[0] = (_next_port[0] + 1) % span
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port in {_PORTS_LOW}-{_PORTS_HIGH - 1}")


def dead_port():
    """A loopback port with nothing listening (bound then closed)."""
    return free_port()
