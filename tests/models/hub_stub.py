"""A stand-in for the Hugging Face hub on loopback, for tests of model downloads.

``serve_hub({"org/name": folder})`` serves each folder as a model repository with the endpoints
``huggingface_hub.snapshot_download`` uses (repository info with the file list, ``HEAD`` / ``GET``
of ``/{repo}/resolve/{revision}/{file}``); point ``HF_ENDPOINT`` at ``hub.url``. Every request
is recorded in ``hub.requests`` so a test can check which files were fetched. Nothing leaves the
machine.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class StubHub:
    url: str
    repos: dict[str, Path]
    requests: list[tuple[str, str]] = field(default_factory=list)

    def fetched_files(self, repo: str) -> set[str]:
        prefix = f"/{repo}/resolve/"
        return {p.split("/", 1)[1] for m, path in self.requests if m == "GET" and path.startswith(prefix)
                for p in [path[len(prefix):]]}


def _commit(folder: Path) -> str:
    return hashlib.sha1(str(sorted(p.name for p in folder.iterdir())).encode()).hexdigest()


@contextmanager
def serve_hub(repos: dict[str, Path]) -> Iterator[StubHub]:
    hub = StubHub("", repos)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _route(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path))
            for repo, folder in hub.repos.items():
                sha = _commit(folder)
                if path.startswith(f"/api/models/{repo}/tree/"):
                    tree = [{"type": "file", "path": p.name, "size": p.stat().st_size,
                             "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                            for p in sorted(folder.iterdir()) if p.is_file()]
                    self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
                    return
                if path.startswith(f"/api/models/{repo}/"):
                    siblings = [{"rfilename": p.name} for p in sorted(folder.iterdir()) if p.is_file()]
                    self._send(200, json.dumps({"id": repo, "sha": sha, "siblings": siblings}).encode(),
                               {"Content-Type": "application/json"}, body)
                    return
                prefix = f"/{repo}/resolve/"
                if path.startswith(prefix):
                    name = path[len(prefix):].split("/", 1)[1]
                    f = folder / name
                    if not f.is_file():
                        break
                    data = f.read_bytes()
                    etag = hashlib.sha256(data).hexdigest()
                    self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{etag}"',
                                           "Content-Type": "application/octet-stream"}, body)
                    return
            self._send(404, b'{"error": "Repository not found"}',
                       {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"}, body)

        def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._route(True)

        def do_HEAD(self) -> None:
            self._route(False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
