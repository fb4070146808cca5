"""Cache of converted weights, so that a second start skips the conversion.

Layout: ``<root>/<key>/shard-00000.safetensors ...`` plus ``manifest.json`` written last; a folder
without a manifest is an interrupted write and is ignored. Writes go to a temporary sibling
folder that is renamed into place, so concurrent loaders never see half a cache.

The key hashes: the converter version, the transformers and torch versions, config.json's bytes,
and each source shard's name, size and mtime (hashing hundreds of GB on every start would cost
more than the conversion it saves). Tensors are stored in the checkpoint's own dtype, so one
cache entry serves every runtime dtype.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from models.checkpoint.convert import CONVERTER_VERSION
from models.checkpoint.source import Checkpoint

MANIFEST = "manifest.json"


def cache_key(ckpt: Checkpoint) -> str:
    import transformers

    h = hashlib.sha256()
    shards = [[s.name, s.stat().st_size, s.stat().st_mtime_ns] for s in ckpt.shards]
    meta = {
        "converter": CONVERTER_VERSION,
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
        "shards": shards,
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    h.update((ckpt.path / "config.json").read_bytes())
    return h.hexdigest()[:32]


class ConvertedCache:
    """One cache entry (``root/key``)."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = Path(root)
        self.folder = self.root / key
        self._tmp: Path | None = None
        self._files: list[str] = []

    def shards(self) -> list[Path] | None:
        """The cached shard files, or None when there is no complete entry."""
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            return None
        try:
            files = json.loads(manifest.read_text())["files"]
        except (OSError, ValueError, KeyError):
            return None
        paths = [self.folder / f for f in files]
        return paths if all(p.is_file() for p in paths) else None

    def begin(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        self._files = []

    def add_shard(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        if self._tmp is None or not tensors:
            return
        name = f"shard-{len(self._files):05d}.safetensors"
        # split tensors are views of one fused tensor: save_file refuses shared storage
        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(self._tmp / name))
        self._files.append(name)

    def commit(self) -> None:
        if self._tmp is None:
            return
        (self._tmp / MANIFEST).write_text(json.dumps({"files": self._files}))
        if self.folder.exists() and self.shards() is None:  # leftover of an interrupted write
            shutil.rmtree(self.folder, ignore_errors=True)
        try:
            os.replace(self._tmp, self.folder)
        except OSError:  # another process won the race (or an old entry is in the way)
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def abort(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
