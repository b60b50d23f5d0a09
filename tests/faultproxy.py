"""A fault-injecting HTTP proxy for S3 tests: sits on 127.0.0.1 in front of moto's server.

For a seeded ~``rate`` fraction of requests it answers ``503 SlowDown`` or drops the connection
without a response; requests under a ``deny`` prefix get ``403 AccessDenied``. Counts what it did
and the bytes it served per object (``served``).
With ``stream_bytes_per_s`` every response body is held back as long as one stream of that
bandwidth would take to deliver it (sleeping, not computing: like a remote store's per-connection
throughput, while many connections together go faster; benchmarks/overlap.py).
Traffic stays on the loopback interface.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)


class FaultProxy:
    def __init__(
        self, upstream: str, rate: float = 0.1, seed: int = 0, stream_bytes_per_s: float = 0.0
    ) -> None:
        self.upstream = urlparse(upstream)
        self.rate = rate
        self.stream_bytes_per_s = stream_bytes_per_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.deny: list[str] = []
        self.counts = {"requests": 0, "slowdown": 0, "dropped": 0, "denied": 0}
        self.served: dict[str, int] = {}  # body bytes of successful GETs, by path
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self) -> None:
                body = self._body()
                with proxy.lock:
                    proxy.counts["requests"] += 1
                    denied = any(self.path.startswith(p) for p in proxy.deny)
                    roll = proxy.rng.random()
                if denied:
                    with proxy.lock:
                        proxy.counts["denied"] += 1
                    return self._reply(403, DENIED)
                if roll < proxy.rate / 2:
                    with proxy.lock:
                        proxy.counts["slowdown"] += 1
                    return self._reply(503, SLOWDOWN)
                if roll < proxy.rate:
                    with proxy.lock:
                        proxy.counts["dropped"] += 1
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return None
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding",)
                }
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=60
                )
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    if self.command == "GET" and resp.status in (200, 206):
                        path = self.path.split("?")[0]
                        with proxy.lock:
                            proxy.served[path] = proxy.served.get(path, 0) + len(data)
                    if proxy.stream_bytes_per_s:
                        time.sleep((len(body) + len(data)) / proxy.stream_bytes_per_s)
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()
                return None

            def _reply(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
