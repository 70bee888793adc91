"""Stores that go away: an HTTP server over a Zarr folder, or a proxy in front of moto's S3 server,
that answer normally, then reset connections, then stop listening (connection refused), and can be
started again on the same port for the rerun (a part's configuration names its input URL).

The clients under test are the real ones (fsspec's aiohttp client for http://, s3fs/aiobotocore for
s3://): a reset is a TCP RST (SO_LINGER 0), a refusal is a closed listening socket.
"""

from __future__ import annotations

import functools
import http.client
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


def forward(handler: Any, up: Any, body: bytes) -> None:
    """Send ``handler``'s request (with ``body``) to ``up`` (a urlsplit of the upstream) and its answer
    back, hop-by-hop headers dropped, HEAD answered without a body: the proxies' one forwarding step."""
    conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
    conn.request(handler.command, handler.path, body=body,
                 headers={k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP})
    resp = conn.getresponse()
    data = resp.read()
    handler.send_response(resp.status, resp.reason)
    for k, v in resp.getheaders():
        if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
            handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)) if handler.command != "HEAD"
                        else resp.getheader("Content-Length", "0"))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)
    conn.close()


class Outage:
    """Serve ``after`` requests (None: all), then reset ``resets`` connections, then refuse every connection.

    With ``armed_by``, ``after`` counts from the first request whose line contains it (e.g.
    ``"PUT /bucket/work/part_00000/"`` + ``checkpoint.json``: the outage then comes after a checkpoint)."""

    def __init__(self, after: int | None = None, resets: int = 3, armed_by: tuple[str, ...] = ()) -> None:
        self.after, self.resets, self.armed_by = after, resets, armed_by
        self.count = 0  # requests seen
        self.since_armed: int | None = None if armed_by else 0
        self.reset_done = 0
        self.lock = threading.Lock()
        self.gone = threading.Event()

    def decide(self, line: str = "") -> str:
        with self.lock:
            self.count += 1
            if self.gone.is_set():
                return "reset"  # a kept-alive connection of a server that is gone
            if self.since_armed is None and all(a in line for a in self.armed_by):
                self.since_armed = 0
                return "serve"
            if self.since_armed is not None:
                self.since_armed += 1
            if self.after is None or self.since_armed is None or self.since_armed <= self.after:
                return "serve"
            if self.reset_done < self.resets:
                self.reset_done += 1
                return "reset"
            self.gone.set()
            return "gone"


def _reset(handler: BaseHTTPRequestHandler) -> None:
    """Drop the connection with a TCP RST, as a crashing server or a load balancer does."""
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.close_connection = True
    try:
        handler.connection.close()
    except OSError:
        pass


class _Gate:
    """Mixed into a handler: every request first asks the server's Outage what to do."""

    def handle_one_request(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            self.close_connection = True
            return
        action = self.server.outage.decide(self.raw_requestline.decode("latin-1"))
        if action == "serve":
            self._serve_line()
            return
        _reset(self)
        if action == "gone":
            threading.Thread(target=self.server.go_away, daemon=True).start()

    def _serve_line(self) -> None:
        if not self.parse_request():
            return
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self.send_error(501)
            return
        method()
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


class _Folder(_Gate, SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"


def _forwarding(upstream: str) -> type[BaseHTTPRequestHandler]:
    up = urlsplit(upstream)

    class Forward(_Gate, BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            forward(self, up, self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    return Forward


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a reset connection is the point, not a failure of the test server

    def go_away(self) -> None:
        self.shutdown()
        self.server_close()


class Store:
    """A running server: ``url``, ``port``, ``outage.count``; ``stop()`` makes it refuse connections."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int, outage: Outage | None) -> None:
        self.server = _Server(("127.0.0.1", port), handler)
        self.server.outage = outage or Outage()
        self.outage = self.server.outage
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if not self.outage.gone.is_set():
            self.outage.gone.set()
            self.server.go_away()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_folder(root: str, port: int = 0, outage: Outage | None = None) -> Store:
    return Store(functools.partial(_Folder, directory=str(root)), port, outage)  # type: ignore[arg-type]


def proxy(upstream: str, port: int = 0, outage: Outage | None = None) -> Store:
    return Store(_forwarding(upstream), port, outage)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
