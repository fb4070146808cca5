"""Finding a checkpoint and reading its files as data.

A *source* is a local folder or a Hugging Face hub id (``OpenGVLab/InternVL2-8B``). Hub ids are
resolved through huggingface_hub's own cache; nothing is downloaded unless the caller asks for
it, and then only data files (config, safetensors, tokenizer) — never ``*.py``: the checkpoint's
remote code is never imported or executed. ``config.json`` is parsed with :mod:`json`.

Only safetensors weights are read: ``pytorch_model*.bin`` files are pickles, and unpickling can
run code, so a checkpoint that has nothing else is refused with :class:`CheckpointNotFound`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.errors import CheckpointCorrupt, CheckpointNotFound

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint folder. ``weight_map`` maps each original tensor name to its shard
    file name; ``shards`` are the shard paths in a stable order."""

    path: Path
    name: str
    config: dict[str, Any]
    shards: tuple[Path, ...]
    weight_map: dict[str, str] = field(default_factory=dict)

    def read_json(self, filename: str) -> dict[str, Any] | None:
        """An optional JSON file of the checkpoint (None when absent)."""
        f = self.path / filename
        return read_json(f) if f.is_file() else None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointCorrupt(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointCorrupt(f"{path} does not hold a JSON object")
    return data


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not source.startswith((".", "/", "~"))


def resolve_folder(source: str | Path, *, hub_cache_dir: Path | None = None,
                   allow_download: bool = False) -> tuple[Path, str]:
    """``(folder, name)`` for a local folder or a hub id found in huggingface_hub's cache.

    A hub id that is not cached raises :class:`CheckpointNotFound` naming the id and the cache
    folder searched, unless ``allow_download``: then it is fetched (data files only,
    :mod:`models.checkpoint.download`), or refused with :class:`DownloadRefused`."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve(), path.resolve().name
    text = str(source)
    if not looks_like_hub_id(text):
        raise CheckpointNotFound(f"checkpoint folder {text!r} does not exist")
    from models.checkpoint.download import cached_snapshot, download_model, hub_cache

    folder = cached_snapshot(text, hub_cache_dir)
    if folder is None:
        if not allow_download:
            raise CheckpointNotFound(
                f"model {text!r} is not in the Hugging Face cache at {hub_cache(hub_cache_dir)} and "
                f"downloads are off; fetch it first (`captionq models pull {text}`) or pass a local folder"
            )
        folder = download_model(text, cache_dir=hub_cache_dir)
    return Path(folder), text


def open_checkpoint(source: str | Path, *, hub_cache_dir: Path | None = None,
                    allow_download: bool = False) -> Checkpoint:
    """Resolve ``source`` and read config.json and the shard list (no tensor is read yet)."""
    folder, name = resolve_folder(source, hub_cache_dir=hub_cache_dir, allow_download=allow_download)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointNotFound(f"{folder} has no config.json")
    config = read_json(config_file)
    shards, weight_map = _find_shards(folder)
    return Checkpoint(path=folder, name=name, config=config, shards=shards, weight_map=weight_map)


def _find_shards(folder: Path) -> tuple[tuple[Path, ...], dict[str, str]]:
    index = folder / INDEX_FILE
    if index.is_file():
        raw = read_json(index).get("weight_map")
        if not isinstance(raw, dict) or not raw:
            raise CheckpointCorrupt(f"{index} has no weight_map")
        weight_map = {str(k): str(v) for k, v in raw.items()}
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointCorrupt(
                f"{folder}: shard(s) listed in {INDEX_FILE} are missing: {', '.join(missing)}"
            )
        return tuple(folder / n for n in names), weight_map
    if (folder / SINGLE_FILE).is_file():
        return (folder / SINGLE_FILE,), {}
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return tuple(found), {}
    if list(folder.glob("pytorch_model*.bin")):
        raise CheckpointNotFound(
            f"{folder} only has pytorch_model*.bin weights; they are pickles (loading them can run "
            "code), convert them to safetensors first"
        )
    raise CheckpointNotFound(f"{folder} has no *.safetensors weights")
