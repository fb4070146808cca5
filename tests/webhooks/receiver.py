"""A real webhook receiver for the tests: an HTTP server on 127.0.0.1 in a thread.

It verifies every request with the reference ``standardwebhooks`` library (never our code) and
answers from a script, so tests can make it fail, stall, redirect or go down and come back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass(frozen=True)
class Answer:
    status: int = 200
    delay: float = 0.0  # seconds to wait before answering (a slow receiver)
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass
class Received:
    msg_id: str
    timestamp: str
    signature: str
    body: bytes
    verified_with: list[int]  # indexes into the receiver's secrets that verified this request
    payload: Any
    at: float
    answered: int


@dataclass
class Receiver:
    secrets: list[str]
    # Answers given in order; once used up, ``default`` is given.
    script: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=Answer)
    port: int = 0
    received: list[Received] = field(default_factory=list)
    on_request: Callable[[Received], None] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Receiver:
        handler = self._handler_class()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; the port stays ours so :meth:`start` can come back on it."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    # --- what arrived -------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        with self._lock:
            return [r.msg_id for r in self.received]

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if 200 <= r.answered < 300]

    def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate(self):
                return True
            time.sleep(0.02)
        return predicate(self)

    def set_script(self, answers: Iterable[Answer]) -> None:
        with self._lock:
            self.script = list(answers)

    # --- the handler ----------------------------------------------------------------------------
    def _next_answer(self) -> Answer:
        with self._lock:
            return self.script.pop(0) if self.script else self.default

    def _record(self, headers: dict[str, str], body: bytes, answer: Answer) -> None:
        verified: list[int] = []
        payload: Any = None
        for i, secret in enumerate(self.secrets):
            try:
                payload = Webhook(secret).verify(body, headers)
                verified.append(i)
            except Exception:
                pass
        rec = Received(
            msg_id=headers.get("webhook-id", ""), timestamp=headers.get("webhook-timestamp", ""),
            signature=headers.get("webhook-signature", ""), body=body, verified_with=verified,
            payload=payload, at=time.monotonic(), answered=answer.status,
        )
        with self._lock:
            self.received.append(rec)
        if self.on_request is not None:
            self.on_request(rec)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = receiver._next_answer()
                if answer.delay:
                    time.sleep(answer.delay)
                receiver._record(headers, body, answer)
                try:
                    self.send_response(answer.status)
                    for k, v in answer.headers:
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:
                    pass  # the sender gave up (timeout) and closed the connection

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
