"""A newcomer's first ten minutes, as real processes in an empty folder with no settings: the
README's command 1 twice, then the usual mistakes — a model that does not exist, an --api-url
with nothing behind it, a request file that is not there — each of which must end at once with
one exact line and exit code 2, and finally the local mode's webhook, which must verify with the
secret ``captionq up`` prints."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from standardwebhooks import Webhook

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "tests/data/conformance/images/img04_448x448.png"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTIONQ_", "AWS_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["HOME"] = str(home)  # no stray .env or hub cache
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def readme_command_1() -> str:
    """The captionq part of the README's command 1 (the venv and pip install are this test's)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"\*\*1\..*?```bash\n(.*?)```", readme, re.S)
    assert block, "README has a command 1"
    command = block.group(1).replace("\\\n", " ")
    start = command.index("captionq make-test-checkpoint")
    return " ".join(command[start:].split())


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("newcomer")
    (folder / "tests").symlink_to(ROOT / "tests")  # the README's paths are relative to a clone
    return folder, _env(folder)


def _run(args: list[str] | str, folder: Path, env: dict[str, str],
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False, shell=isinstance(args, str))


def _captionq(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def test_readme_command_1_runs_twice(newcomer):
    folder, env = newcomer
    command = readme_command_1()
    first = _run(command, folder, env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.strip(), "an answer on stdout"
    assert "wrote a tiny InternVL2 (internlm2, context 8192) checkpoint to tiny-internvl2" in first.stderr

    second = _run(command, folder, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.splitlines()[0] == ("reusing the tiny InternVL2 (internlm2) checkpoint in "
                                             "tiny-internvl2 (same settings; --force rewrites it)")
    assert second.stdout == first.stdout, "same checkpoint, same greedy answer"


def test_a_missing_model_is_one_line_and_exit_2(newcomer):
    folder, env = newcomer
    started = time.monotonic()
    result = _run(_captionq("caption", IMAGE, "--model", "./nope"), folder, env)
    assert (result.returncode, result.stderr) == (
        2, "error: cannot load the model ./nope: checkpoint folder './nope' does not exist\n")
    assert result.stdout == ""
    assert time.monotonic() - started < 60, "it ends when the worker dies, not at a timeout"


def test_a_dead_api_url_is_an_error_not_a_fallback(newcomer):
    folder, env = newcomer
    result = _run(_captionq("caption", IMAGE, "--api-url", "http://127.0.0.1:9"), folder, env)
    assert (result.returncode, result.stderr) == (
        2, "error: cannot reach captionq at http://127.0.0.1:9: connection refused\n")


def test_a_missing_request_file_is_one_line(newcomer):
    folder, env = newcomer
    result = _run(_captionq("submit", "nonexistent.json"), folder, env)
    assert (result.returncode, result.stderr) == (2, "error: nonexistent.json: no such file\n")


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _read_secret(proc: subprocess.Popen[str], deadline: float) -> tuple[list[str], str]:
    assert proc.stderr is not None
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("webhook secret "):
            return lines, line.split()[2]
    raise AssertionError("captionq up printed no webhook secret:\n" + "\n".join(lines))


def test_local_mode_webhook_verifies_with_the_printed_secret(newcomer):
    folder, env = newcomer
    if not (folder / "tiny-internvl2").is_dir():
        assert _run(_captionq("make-test-checkpoint", "tiny-internvl2"), folder, env).returncode == 0
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = _free_port()
    up = subprocess.Popen(_captionq("up", "--port", str(port), "--model", "tiny-internvl2"), cwd=folder,
                          env={**env, "CAPTIONQ_ALLOW_PRIVATE_URLS": "true"}, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        lines, secret = _read_secret(up, time.monotonic() + 60)
        assert "tenant ten_local: every request belongs to it while auth is disabled" in lines
        threading.Thread(target=lambda: [None for _ in up.stderr], daemon=True).start()  # type: ignore[union-attr]
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        _wait_healthy(api, time.monotonic() + 60)
        hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        job = api.post("/v1/jobs", json={"prompts": ["Hi"], "generation": {"max_new_tokens": 4},
                                         "webhook": {"url": hook, "events": ["job.succeeded"]}})
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + 90
        while not _Receiver.received and time.monotonic() < deadline:
            assert up.poll() is None, "captionq up stopped"
            time.sleep(0.2)
        assert _Receiver.received, "no webhook arrived"
        headers, body = _Receiver.received[0]
        event = Webhook(secret).verify(body, headers)
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job.json()["id"]

        # caption against this server: --timeout ends it with one line and exit 3.
        waited = _run(_captionq("caption", IMAGE, "--api-url", f"http://127.0.0.1:{port}",
                                "--max-new-tokens", "1000", "--timeout", "0.5"), folder, env)
        assert waited.returncode == 3, waited.stderr
        assert re.fullmatch(r"error: timed out after 0\.5 s \(--timeout\): tests/data/conformance/images/"
                            r"img04_448x448\.png is still (queued|running) \(job job_\w+\)\n", waited.stderr)
        assert waited.stdout == ""
        for left in api.get("/v1/jobs").json()["data"]:  # so that Ctrl-C need not wait for it
            if left["status"] in ("queued", "running"):
                api.post(f"/v1/jobs/{left['id']}/cancel")
    finally:
        receiver.shutdown()
        up.send_signal(signal.SIGINT)  # Ctrl-C: the API and the worker stop, exit 130 as usual
        try:
            assert up.wait(timeout=60) == 130
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)


def _wait_healthy(api: httpx.Client, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if api.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the local API did not answer")


def _free_port() -> int:
    """A loopback port free now (released again for the process under test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
