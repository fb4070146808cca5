"""Byte pumps for the tests' TCP forwarders (a dependency that a test can cut, a server that
drops a body half way): one copy loop for all of them."""

from __future__ import annotations

import contextlib
import socket


def pump(src: socket.socket, dst: socket.socket, limit: int | None = None) -> None:
    """Copy ``src`` to ``dst`` until either side closes, or until ``limit`` bytes were sent (a
    connection cut mid-body); then shut both down so the other direction's pump ends too."""
    sent = 0
    try:
        while data := src.recv(65536):
            if limit is not None and sent + len(data) >= limit:
                dst.sendall(data[: limit - sent])
                break
            dst.sendall(data)
            sent += len(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
