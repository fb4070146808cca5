"""Test helpers for the API and jobs tests: a migrated database, a real uvicorn server on a free
loopback port (in a thread), tenants, and a kombu consumer for the Celery queues."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from kombu import Exchange, Queue

from core.db import Database
from core.migrate import upgrade
from core.settings import Settings
from jobs.queue import gpu_queues, make_celery
from jobs.tenants import CreatedKey, create_api_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def migrated(settings: Settings) -> Settings:
    upgrade(settings)
    return settings


def new_tenant(settings: Settings, name: str) -> CreatedKey:
    db = Database(settings)
    try:
        with db.session() as session:
            return create_api_key(session, name)
    finally:
        db.dispose()


@dataclass
class LiveServer:
    base_url: str
    server: Any
    thread: threading.Thread
    app: Any

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_server(settings: Settings, **app_kwargs: Any) -> LiveServer:
    import uvicorn

    from api.app import create_app

    app = create_app(settings, **app_kwargs)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return LiveServer(base, server, thread, app)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the API server did not start")


@contextmanager
def client(base_url: str, api_key: str | None) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as c:
        yield c


def drain(settings: Settings, queue: str | None = None, timeout: float = 0.5, expect: int | None = None,
          deadline: float = 10.0) -> list[dict[str, Any]]:
    """Consume every message in ``queue`` with kombu (acking them); by default the caption
    queues of the default model (``gpu.<default>`` and the legacy ``gpu``). With ``expect`` keep
    going until that many arrived (or ``deadline`` passes: publishing may run after the response)."""
    app = make_celery(settings)
    got: list[dict[str, Any]] = []

    def on_message(body: Any, message: Any) -> None:
        got.append({"id": message.headers.get("id"), "task": message.headers.get("task"),
                    "args": body[0] if isinstance(body, list) else None,
                    "priority": message.properties.get("priority"),
                    "routing_key": message.delivery_info.get("routing_key")})
        message.ack()

    names = [queue] if queue else gpu_queues(settings, settings.registry.default)
    qs = [Queue(n, Exchange("captionq", type="direct"), routing_key=n) for n in names]
    end = time.monotonic() + deadline
    try:
        with app.connection_for_read() as conn, conn.Consumer(qs, callbacks=[on_message], accept=["json"]):
            while True:
                try:
                    conn.drain_events(timeout=timeout)
                except TimeoutError:
                    if expect is None or len(got) >= expect or time.monotonic() > end:
                        break
    finally:
        app.close()
    return got


def png_bytes(size: tuple[int, int] = (8, 8)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(mime: str = "image/png", data: bytes | None = None) -> str:
    return f"data:{mime};base64," + base64.b64encode(data if data is not None else png_bytes()).decode()


def problem_of(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text[:300]
    body: dict[str, Any] = resp.json()
    assert {"type", "title", "status", "detail", "code"} <= set(body), body
    assert body["status"] == resp.status_code
    return body


def service(settings: Settings) -> Any:
    """A JobService with a real publisher, as the worker builds it (call ``.db.dispose()``)."""
    from jobs.queue import Publisher
    from jobs.service import JobService

    return JobService(Database(settings), settings, Publisher.from_settings(settings))
