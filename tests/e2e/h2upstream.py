"""A loopback HTTP/2 (h2c, prior knowledge) upstream whose responses can end with trailers
instead of a last body chunk, as gRPC-less frameworks and Envoy-to-Envoy hops send them.

`GET /any/path?status=404&trailers=1&ct=text/html` answers `status` with a body, then a
trailer block that ends the stream (`trailers=0`: the last DATA frame ends it)."""

import socket
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
from harness import cluster, hcm_of
from servers import SocketServer

BODY = b"original body from an h2 upstream"


def add_h2_route(config, port):
    """Envoy's `/h2/` routes to an HTTP/2 (prior knowledge) upstream on `port`."""
    h2 = cluster("h2", port)
    h2["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    config["static_resources"]["clusters"].append(h2)
    routes = hcm_of(config)["route_config"]["virtual_hosts"][0]["routes"]
    routes.insert(0, {"name": "h2-route", "match": {"prefix": "/h2/"}, "route": {"cluster": "h2"}})


class H2Upstream(SocketServer):
    def __init__(self):
        self.requests = []
        super().__init__()

    def _answer(self, conn):
        h2c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        h2c.initiate_connection()
        try:
            conn.sendall(h2c.data_to_send())
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                                   for k, v in event.headers}
                        self.requests.append(headers)
                        self._respond(h2c, event.stream_id, headers)
                conn.sendall(h2c.data_to_send())
        except OSError:
            return

    @staticmethod
    def _respond(h2c, stream_id, headers):
        q = {k: v[0] for k, v in parse_qs(urlsplit(headers.get(":path", "/")).query).items()}
        trailers = q.get("trailers", "1") == "1"
        head = [(":status", q.get("status", "404")), ("content-type", q.get("ct", "text/html")),
                ("content-length", str(len(BODY)))]
        h2c.send_headers(stream_id, head)
        h2c.send_data(stream_id, BODY, end_stream=not trailers)
        if trailers:
            h2c.send_headers(stream_id, [("x-checksum", "abc123")], end_stream=True)



def h2_get(port, path, timeout=10.0):
    """An HTTP/2 (prior knowledge) GET through Envoy: (status, headers, body, trailers).
    curl does not show trailers; this client sees every frame. A stream reset or a
    connection closed before the stream ended raises."""
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "www.test")],
                          end_stream=True)
        sock.sendall(conn.data_to_send())
        headers, body, trailers = {}, b"", {}
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed before the stream ended")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.StreamReset):
                    raise ConnectionError(f"stream reset: {event.error_code!r}")
                elif isinstance(event, h2.events.StreamEnded):
                    return int(headers[":status"]), headers, body, trailers
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
