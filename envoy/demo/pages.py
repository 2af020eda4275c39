#!/usr/bin/env python3
"""Demo error service: serves a folder (envoy/error-pages) on loopback, as `python3 -m
http.server` does, but with keep-alive and a listen queue deep enough for the filter's
prewarm (a few fetches at once per Envoy worker when the configuration goes live; the
standard server's queue of 5 drops connections beyond it)."""

import functools
import signal
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


class Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8082
    directory = sys.argv[2] if len(sys.argv) > 2 else "envoy/error-pages"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Server(("127.0.0.1", port), functools.partial(Handler, directory=directory)).serve_forever()
