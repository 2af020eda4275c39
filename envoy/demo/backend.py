#!/usr/bin/env python3
"""Demo backend: answers any status like httpbin (`/status/NNN`, also below a prefix), with an error body and
headers that the filter must never pass on; everything else is a 200 page."""

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        codes = [b for a, b in zip(parts, parts[1:]) if a == "status" and b.isdigit()]
        if codes:
            status, body = int(codes[0]), b"backend error page (the filter replaces this)\n"
            extra = [("set-cookie", "backend=secret"), ("content-type", "text/plain")]
        else:
            status, body = 200, b"hello from the demo backend\n"
            extra = [("content-type", "text/plain")]
        self.send_response(status)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET
    do_POST = do_GET


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
    # As a container's first process, SIGTERM does nothing unless handled: stop at once.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
