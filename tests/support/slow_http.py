"""An image URL that answers slowly: a job that lasts at least that long whatever the machine's
speed (a tiny model answers 1,000 tokens in under a second), for tests that need a job still
running when they look."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.api.helpers import png_bytes


@contextmanager
def slow_image(delay: float) -> Iterator[str]:
    """An http URL whose PNG arrives after ``delay`` seconds: a job that takes at least that long,
    however fast the machine decodes."""
    body = png_bytes((32, 32))

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name for the GET handler
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/slow.png"
    finally:
        server.shutdown()
        server.server_close()
