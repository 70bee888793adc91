"""An HTTP proxy in front of the moto server that answers some requests with S3 errors.

Transient errors (503 SlowDown, what S3 sends under load) must be retried by the client with
backoff; permanent ones (403 AccessDenied) must not. The proxy forwards everything else unchanged,
so the client under test is the real s3fs/aiobotocore stack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from store.outage import forward

SLOW_DOWN = (503, "SlowDown", "Please reduce your request rate.")
ACCESS_DENIED = (403, "AccessDenied", "Access Denied")


class FlakyProxy:
    """``fail(method, path, n)`` decides per request (n counts requests from 0): None or an error tuple."""

    def __init__(self, upstream: str, fail: Callable[[str, str, int], tuple[int, str, str] | None]) -> None:
        up = urlsplit(upstream)
        self.fail, self.count, self.injected = fail, 0, []
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    n = proxy.count
                    proxy.count += 1
                err = proxy.fail(self.command, self.path, n)
                if err is not None:
                    proxy.injected.append((self.command, self.path, err[0]))
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{err[1]}</Code>'
                               f"<Message>{err[2]}</Message></Error>").encode()
                    self.send_response(err[0])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                forward(self, up, body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
