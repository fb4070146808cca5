"""Every command answers a usual mistake — a missing file, an unsupported URL, a server or a
database that is not there, a bad option — with one line on stderr and exit code 2, and no
traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEAD = "http://127.0.0.1:9"
DEAD_DB = "postgresql://captionq:secret@127.0.0.1:9/captionq"
UNREACHABLE = f"error: cannot reach captionq at {DEAD}: connection refused"
NO_DB = ('error: cannot use the database at postgresql://captionq:***@127.0.0.1:9/captionq: '
         'connection failed: connection to server at "127.0.0.1", port 9 failed: Connection refused')

CASES = [
    (["submit", "nonexistent.json"], "error: nonexistent.json: no such file"),
    (["submit", "bad.json"], "error: bad.json: not JSON: Expecting value: line 1 column 1 (char 0)"),
    (["submit", "job.json", "--api-url", DEAD], UNREACHABLE),
    (["status", "job_x", "--api-url", DEAD], UNREACHABLE),
    (["wait", "bat_x", "--api-url", DEAD], UNREACHABLE),
    (["results", "bat_x", "--api-url", DEAD], UNREACHABLE),
    (["cancel", "job_x", "--api-url", DEAD], UNREACHABLE),
    (["status", "x_1"], "error: 'x_1' is neither a job_… nor a bat_… id"),
    (["caption", "nope.png"], "error: nope.png: no such file"),
    (["caption", "ftp://example.com/a.png"],
     "error: ftp://example.com/a.png: unsupported URL scheme 'ftp'; accepted: s3://, https://, http://, "
     "data: or a local file"),
    (["caption", "job.json", "--api-url", DEAD], UNREACHABLE),
    (["caption", "job.json", "--api-url", DEAD, "--model", "m"],
     "error: --model starts an in-process local mode; it cannot be combined with --api-url"),
    (["caption", "job.json", "--bogus"], "error: No such option: --bogus (see captionq caption --help)"),
    (["wait", "job_x", "--timeout", "soon"],
     "error: Invalid value for '--timeout': Input should be a valid number, unable to parse string as "
     "a number (see captionq wait --help)"),
    (["migrate"], NO_DB),
    (["keys", "create", "--name", "acme"], NO_DB),
    (["worker", "--queues", "cpu"], "error: unknown queue(s) ['cpu']: use gpu, io"),
    (["worker", "--model", "internvl2-76b"],
     "error: unknown model 'internvl2-76b' (--model): this deployment serves default (CAPTIONQ_MODELS)"),
]


@pytest.mark.parametrize(("args", "line"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_mistake_is_one_line_and_exit_2(tmp_path, args, line):
    (tmp_path / "job.json").write_text('{"prompts": ["Hello"]}')
    (tmp_path / "bad.json").write_text("nope")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTIONQ_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path), CAPTIONQ_DATABASE_URL=DEAD_DB)
    result = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", "")


def test_up_refuses_a_port_in_use(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTIONQ_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "cli.main", "up", "--port", str(port)], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=60, check=False)
    line = (f"error: port {port} on 127.0.0.1 is already in use (another captionq up?); "
            "pick another with --port")
    assert (result.returncode, result.stderr) == (2, line + "\n")
    assert list(tmp_path.iterdir()) == [], "nothing started, nothing written"


def test_up_stops_with_the_workers_line_when_the_model_does_not_load(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTIONQ_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "cli.main", "up", "--port", str(port),
                             "--model", "./nope"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1] == (
        "error: cannot load the model ./nope: checkpoint folder './nope' does not exist")
    assert "Traceback" not in result.stderr and "CRITICAL" not in result.stderr
