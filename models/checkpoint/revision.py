"""The revision of a checkpoint: what a job records as the weights that answered it.

A Hugging Face snapshot folder (``…/snapshots/<commit>``) is its commit hash. Any other folder is
``sha256:`` and the first 16 hex digits of a digest over its files: every file's name and size,
small files (config, tokenizer, small weights) whole, and of each large file its first and last
MiB and a MiB at each eighth. Reading whole multi-GB shards would add minutes to a worker's start;
the sampled MiBs differ between any two trainings, and any edit of the config or tokenizer shows.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SMALL_FILE = 64 * 1024 * 1024
SAMPLE = 1024 * 1024
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def checkpoint_revision(folder: Path) -> str:
    """The revision of the checkpoint in ``folder`` (see the module docs)."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and _COMMIT.match(folder.name):
        return folder.name
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not _ignored(p, folder)):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with path.open("rb") as f:
            if size <= SMALL_FILE:
                digest.update(f.read())
                continue
            for eighth in range(8):
                f.seek(size * eighth // 8)
                digest.update(f.read(SAMPLE))
            f.seek(size - SAMPLE)
            digest.update(f.read(SAMPLE))
    return "sha256:" + digest.hexdigest()[:16]


def _ignored(path: Path, folder: Path) -> bool:
    """Files that do not change the answers: hidden files and folders (``.cache``, a writer's
    own bookkeeping)."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)
