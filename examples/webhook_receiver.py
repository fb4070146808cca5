"""A captionq webhook receiver: verify, dedupe, acknowledge fast.

Run it::

    pip install standardwebhooks
    CAPTIONQ_WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py --port 8080

and submit jobs with ``"webhook": {"url": "https://<your host>/captionq"}``.

What a correct receiver does (docs/webhooks.md explains why):

1. **Verify** every request with the Standard Webhooks library, on the *raw body bytes* (parsing
   and re-serialising the JSON would change the bytes and break the signature). The library also
   rejects timestamps more than 5 minutes off, which stops replays. During a secret rotation
   captionq signs with the old and the new secret; list both here
   (``CAPTIONQ_WEBHOOK_SECRET=whsec_new,whsec_old``) and either one verifies.
2. **Dedupe** by the ``webhook-id`` header. Delivery is at least once: a retry after a timeout, or
   an operator's redelivery, sends the same message (same id) again. Here the ids live in a small
   SQLite file so a restart does not forget them.
3. **Answer 2xx quickly** (within 10 s) and do slow work afterwards. Any other answer, a timeout or
   a redirect counts as a failure and is retried with backoff.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

MAX_BODY = 10 * 1024 * 1024  # a Job with long outputs is big, but not this big

Handler = Callable[[str, dict[str, Any]], None]  # (webhook-id, event) -> None


class Deduper:
    """Remembers which ``webhook-id`` values were processed (SQLite, safe across threads)."""

    def __init__(self, path: str = ":memory:") -> None:
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, at REAL DEFAULT (julianday('now')))"
        )
        self._lock = threading.Lock()

    def first_time(self, msg_id: str) -> bool:
        """True exactly once per id: the INSERT succeeds only for an id not seen before."""
        with self._lock, self._db:
            cur = self._db.execute("INSERT OR IGNORE INTO seen (id) VALUES (?)", (msg_id,))
            return cur.rowcount == 1

    def forget(self, msg_id: str) -> None:
        """Undo :meth:`first_time` when processing failed, so the retry is processed."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM seen WHERE id = ?", (msg_id,))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the sender hung up (it timed out, or closed its connection): nothing to report
        super().handle_error(request, client_address)


def make_server(
    secrets: list[str], handle: Handler, *, host: str = "127.0.0.1", port: int = 8080,
    deduper: Deduper | None = None, path: str = "/captionq",
) -> ThreadingHTTPServer:
    """An HTTP server that calls ``handle(webhook_id, event)`` once per verified message."""
    verifiers = [Webhook(s) for s in secrets]
    seen = deduper or Deduper()

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != path:
                return self._answer(404, "not found")
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                return self._answer(413, "too large")
            body = self.rfile.read(length)  # the raw bytes: verify these, not re-encoded JSON
            headers = {k.lower(): v for k, v in self.headers.items()}
            event = None
            for wh in verifiers:
                try:
                    event = wh.verify(body, headers)
                    break
                except Exception:  # wrong secret, bad signature, stale timestamp, missing headers
                    continue
            if event is None:
                return self._answer(401, "signature verification failed")
            msg_id = headers["webhook-id"]
            if not seen.first_time(msg_id):
                return self._answer(200, "duplicate, already processed")
            try:
                handle(msg_id, event)
            except Exception:
                seen.forget(msg_id)  # let captionq's retry bring it back
                return self._answer(500, "processing failed")
            return self._answer(204, "")

        def _answer(self, status: int, text: str) -> None:
            data = text.encode()
            # If the sender gave up waiting, this write fails (ignored by _Server): it will retry,
            # and the dedupe above recognises the repeat.
            self.send_response(status)
            self.send_header("content-type", "text/plain; charset=utf-8")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet; the handler prints
            pass

    return _Server((host, port), Receiver)


def print_event(msg_id: str, event: dict[str, Any]) -> None:
    data = event.get("data") or {}
    line: dict[str, Any] = {"webhook_id": msg_id, "type": event.get("type"), "id": data.get("id"),
                            "status": data.get("status")}
    if event.get("type") == "job.succeeded":
        line["text"] = (data.get("output") or {}).get("text")
    elif event.get("type") == "job.failed":
        line["error"] = data.get("error")
    elif event.get("type") == "batch.completed":
        line["counts"] = data.get("counts")
    print(json.dumps(line, ensure_ascii=False), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--path", default="/captionq")
    parser.add_argument("--dedupe-db", default="webhook_ids.sqlite3",
                        help="SQLite file remembering processed webhook ids (':memory:' to forget on exit)")
    args = parser.parse_args()
    secrets = [s.strip() for s in os.environ.get("CAPTIONQ_WEBHOOK_SECRET", "").split(",") if s.strip()]
    if not secrets:
        parser.error("set CAPTIONQ_WEBHOOK_SECRET to the tenant's whsec_ secret "
                     "(comma-separated during a rotation)")
    server = make_server(secrets, print_event, host=args.host, port=args.port,
                         deduper=Deduper(args.dedupe_db), path=args.path)
    print(f"listening on http://{args.host}:{args.port}{args.path}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
