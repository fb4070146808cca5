"""Private services the fault suite may break: a PostgreSQL cluster, a Redis server and an S3
forwarder of its own (own ports and data directories), so it can stop, kill and restart them
without touching the shared test services other sessions use."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests.api.helpers import free_port
from tests.support.sockets import pump


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.getuid() == 0 else args


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    raise RuntimeError(f"{name} not found")


class PrivatePostgres:
    def __init__(self, root: Path) -> None:
        # Its own directory under the system temp dir: the postgres user (the server refuses to
        # run as root) cannot enter pytest's per-user temp tree.
        self.dir = Path(tempfile.mkdtemp(prefix="captionq-faults-pg-"))
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        subprocess.run(_as_postgres([_pg_bin("initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                                     "--auth=trust", "-E", "UTF8"]), check=True, capture_output=True)
        self.start()
        subprocess.run(_as_postgres([_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                                     "postgres", "-c", "CREATE DATABASE captionq"]), check=True,
                       capture_output=True)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/captionq"

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.dir / "data"), *args]), check=True,
                       capture_output=True, timeout=120)

    def start(self) -> None:
        self._ctl("-w", "-l", str(self.dir / "log"), "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c max_connections=300",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-w", "-m", mode, "stop")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    def __init__(self, root: Path) -> None:
        self.dir = root / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, aof: bool) -> None:
        """Start it; without ``aof`` nothing survives the next stop."""
        if not aof:
            for f in self.dir.glob("*"):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes" if aof else "no", "--appendfsync", "everysec"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not come up")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.kill()


class Forwarder:
    """A TCP forwarder to ``target`` that can be cut (every open connection reset, new ones reset
    as soon as they are accepted) and restored: the S3 server "down" for the workers."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = True
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        self.up = True

    def cut(self) -> None:
        self.up = False
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            _reset(c)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.up:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()


    def close(self) -> None:
        self.cut()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a crashed server's host would answer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
