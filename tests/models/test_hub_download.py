"""Hub downloads against a stand-in hub on loopback (HF_ENDPOINT): data files only, refusals as
one-line DownloadRefused errors, `captionq models pull`, and a worker runtime given a hub id that
is not cached. No request leaves the machine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.checkpoint.download import download_model
from models.checkpoint.source import open_checkpoint
from models.errors import CheckpointNotFound, DownloadRefused
from models.testing import write_test_checkpoint
from tests.models.hub_stub import StubHub, serve_hub

ROOT = Path(__file__).resolve().parents[2]
REPO = "OpenGVLab/InternVL2-Tiny"


@pytest.fixture(scope="module")
def repo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_test_checkpoint(tmp_path_factory.mktemp("repo") / "tiny", "qwen2", seed=5)
    # what a real repository also holds: remote code, a pickle, docs; none may be fetched
    (folder / "modeling_internvl_chat.py").write_text("raise SystemExit('code must not be fetched')\n")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    (folder / "README.md").write_text("# tiny\n")
    return folder


@pytest.fixture
def hub(repo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StubHub]:
    from huggingface_hub import constants

    with serve_hub({REPO: repo_folder}) as stub:
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        # huggingface_hub reads HF_ENDPOINT when imported: its URLs must point at the stub too
        monkeypatch.setattr(constants, "ENDPOINT", stub.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            stub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield stub


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_download_fetches_data_files_only_then_reads_the_cache(hub: StubHub, tmp_path: Path) -> None:
    folder = download_model(REPO, progress=False)
    assert folder.is_relative_to(tmp_path / "hub")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
                     "tiny_tokens.json", "tokenizer.json", "tokenizer_config.json"]
    assert hub.fetched_files(REPO) == set(names)
    hub.repos.clear()  # the hub forgets the model: the cache alone must serve it now
    ckpt = open_checkpoint(REPO)
    assert ckpt.path == folder and ckpt.name == REPO


def test_open_checkpoint_downloads_only_when_allowed(hub: StubHub) -> None:
    with pytest.raises(CheckpointNotFound, match="captionq models pull"):
        open_checkpoint(REPO)
    assert hub.requests == []
    assert open_checkpoint(REPO, allow_download=True).config["template"] == "Hermes-2"


def test_offline_and_unreachable_hubs_refuse_in_one_line(hub: StubHub,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadRefused, match="HF_HUB_OFFLINE") as offline:
        open_checkpoint(REPO, allow_download=True)
    assert hub.requests == [] and "\n" not in offline.value.message
    assert offline.value.code == "download_refused" and not offline.value.retryable
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(DownloadRefused, match="not reachable") as unreachable:
        download_model(REPO, progress=False)
    assert "\n" not in unreachable.value.message


def test_a_model_the_hub_lacks_is_not_found(hub: StubHub) -> None:
    with pytest.raises(CheckpointNotFound, match="has no model 'OpenGVLab/Nope'"):
        download_model("OpenGVLab/Nope", progress=False)


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_models_pull(hub: StubHub, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CAPTIONQ_"))}
    env.update(PYTHONPATH=str(ROOT), HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "cli-hub"),
               HF_HUB_DISABLE_TELEMETRY="1")
    first = _cli(["models", "pull", REPO], env, tmp_path)
    assert first.returncode == 0, first.stderr
    snapshot = Path(first.stdout.strip())
    assert snapshot.is_relative_to(tmp_path / "cli-hub") and (snapshot / "model.safetensors").is_file()
    assert "modeling_internvl_chat.py" not in hub.fetched_files(REPO)
    again = _cli(["models", "pull", REPO], env, tmp_path)
    assert again.returncode == 0 and "already in the cache" in again.stderr
    refused = _cli(["models", "pull", "OpenGVLab/Other"], {**env, "HF_HUB_OFFLINE": "1"}, tmp_path)
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: download_refused: ")
    assert "HF_HUB_OFFLINE" in lines[0]
    assert _cli(["models", "pull", "./not-an-id"], env, tmp_path).returncode == 2


def test_worker_runtime_downloads_a_hub_model(hub: StubHub, tmp_path: Path) -> None:
    from core.settings import Settings
    from worker.runtime import Runtime

    settings = Settings(model=REPO, device="cpu", dtype="float32", torch_threads=1,
                        database_url=f"sqlite:///{tmp_path}/captionq.db", data_dir=tmp_path / "data",
                        local_mode=True)
    rt = Runtime(settings)
    try:
        engine = rt.load_model()
        assert engine.info.name == REPO and engine.info.template == "Hermes-2"
        assert "model.safetensors" in hub.fetched_files(REPO)
    finally:
        rt.close()
    shutil.rmtree(tmp_path / "hub")
