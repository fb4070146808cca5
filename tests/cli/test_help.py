"""`captionq --help` lists every command, and each has a real --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ["serve", "worker", "migrate", "keys", "up", "caption", "submit", "wait", "status",
            "results", "cancel", "workers", "make-test-checkpoint", "plans"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          check=False, timeout=60)


def test_top_level_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", [*COMMANDS, "keys create", "keys rotate-webhook-secret"])
def test_each_command_has_help(command):
    result = run_cli(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert len(result.stdout.splitlines()) > 4


def test_bad_setting_is_one_clear_line(tmp_path):
    env_result = subprocess.run(
        [sys.executable, "-m", "cli.main", "migrate"], capture_output=True, text=True, check=False,
        timeout=60, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "CAPTIONQ_AUTH": "disabled",
             "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert env_result.returncode == 2
    assert "CAPTIONQ_AUTH" in env_result.stderr or "local mode" in env_result.stderr
    assert "Traceback" not in env_result.stderr
