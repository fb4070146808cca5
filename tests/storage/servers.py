"""Real local servers for the storage tests: an HTTP(S) media server with misbehaving routes, and
a TCP proxy in front of the S3 server that can break connections or answer 503 on purpose."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.support.sockets import pump


@dataclass
class ServerState:
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path -> (body, content type)
    hits: Counter[str] = field(default_factory=Counter)
    hosts: list[str] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(
        self, status: int, body: bytes = b"", ctype: str = "text/plain", headers: dict | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        st = self.server.state
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        st.hits[path] += 1
        st.hosts.append(self.headers.get("Host", ""))
        if path in st.files:
            body, ctype = st.files[path]
            return self._send(200, body, ctype)
        if path == "/host":
            return self._send(200, self.headers.get("Host", "").encode())
        if path == "/redirect":
            return self._send(int(query.get("status", ["302"])[0]), headers={"Location": query["to"][0]})
        if path.startswith("/chain/"):
            n = int(path.rsplit("/", 1)[1])
            return self._send(302, headers={"Location": f"/chain/{n - 1}" if n > 1 else "/img.png"})
        if path == "/missing":
            return self._send(404, b"not here")
        if path == "/gone":
            return self._send(410)
        if path == "/forbidden":
            return self._send(403)
        if path == "/teapot":
            return self._send(418)
        if path.startswith("/flaky/"):  # 500 the first time, the PNG afterwards
            if st.hits[path] == 1:
                return self._send(500, b"oops")
            body, ctype = st.files["/img.png"]
            return self._send(200, body, ctype)
        if path == "/busy":
            return self._send(503, headers={"Retry-After": "0"})
        if path == "/slow":
            time.sleep(float(query.get("s", ["2"])[0]))
            return self._send(200, b"late")
        if path == "/drip":  # headers at once, then a byte every 50 ms
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                self.wfile.write(st.files["/img.png"][0][:8])
                for _ in range(200):
                    time.sleep(0.05)
                    self.wfile.write(b"x")
                    self.wfile.flush()
            except OSError:
                pass
            return None
        if path == "/big-declared":
            body, ctype = st.files["/img.png"]
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)
            self.close_connection = True
            return None
        if path == "/big-chunked":  # no length, more bytes than any test cap
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                head = st.files["/img.png"][0]
                for i in range(200):
                    data = head if i == 0 else b"\0" * 65536
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            return None
        return self._send(404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.server.state.hits[self.path] += 1
        if self.path == "/hook-redirect":
            return self._send(307, headers={"Location": "/hook"})
        return self._send(200, b"got " + body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    state: ServerState

    def handle_error(self, request: object, client_address: object) -> None:  # broken pipes etc.
        pass


@dataclass
class RunningServer:
    base: str  # e.g. http://127.0.0.1:PORT
    port: int
    state: ServerState
    server: _Server

    def url(self, path: str) -> str:
        return self.base + path


def start_http(state: ServerState, tls: ssl.SSLContext | None = None) -> RunningServer:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.state = state
    if tls is not None:

        def sni_cb(sock: ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
            state.sni.append(name)

        tls.sni_callback = sni_cb
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    return RunningServer(f"{'https' if tls else 'http'}://127.0.0.1:{port}", port, state, srv)


def make_ca_and_cert(tmp: Path, names: list[str]) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA and a server certificate for ``names`` (DNS names only, no IP SANs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "captionq test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = tmp / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem, key_pem = tmp / "cert.pem", tmp / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_pem, key_pem)
    return ca_pem, server_ctx


class FaultProxy:
    """A TCP proxy to ``upstream``. Each new client connection takes the next mode from
    ``modes`` (then ``pass``): ``pass`` forwards; ``503`` answers an S3 SlowDown error itself;
    ``cut:N`` forwards the request but closes after N bytes of the answer."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.modes: list[str] = []
        self.connections = 0
        self._live: list[socket.socket] = []
        self._lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, *modes: str) -> None:
        """Queue modes for the next connections, and drop the live ones so that clients with
        pooled keep-alive connections must connect again (and meet the new modes)."""
        with self._lock:
            self.modes[:] = list(modes)
            live, self._live = self._live, []
        for s in live:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                mode = self.modes.pop(0) if self.modes else "pass"
                self.connections += 1
                self._live.append(client)
            threading.Thread(target=self._serve, args=(client, mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        try:
            if mode == "503":
                _read_request(client)
                body = (
                    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                )
                client.sendall(
                    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                return
            upstream = socket.create_connection(self.upstream)
            limit = int(mode.split(":")[1]) if mode.startswith("cut:") else None
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            pump(upstream, client, limit)
            upstream.close()
        except OSError:
            pass
        finally:
            client.close()

    def close(self) -> None:
        self.sock.close()


def _read_request(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            need = int(line.split(b":")[1]) - len(rest)
            while need > 0:
                chunk = sock.recv(min(need, 65536))
                if not chunk:
                    return
                need -= len(chunk)
