"""Write a generated folder once: reuse it when it was made with the same recipe, rewrite it on
request, and never leave a half-written folder behind.

The recipe (the options that decide the folder's content) is stored in the folder as
``RECIPE_FILE``. A folder with the same recipe is reused as it is, so a quick start can run
twice; ``force`` rewrites it. Every write goes to a staging folder beside the target that is
renamed into place only when complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

RECIPE_FILE = ".captionq-recipe.json"

Outcome = Literal["written", "reused", "rewritten"]


class FolderInUse(Exception):
    """The target holds something else: another recipe, or files this command did not write."""


def read_recipe(folder: Path) -> dict[str, Any] | None:
    try:
        recipe = json.loads((folder / RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recipe if isinstance(recipe, dict) else None


def write_once(folder: Path, recipe: dict[str, Any], write: Callable[[Path], object], *,
               force: bool = False) -> Outcome:
    """Make ``folder`` hold ``write``'s output for ``recipe`` (JSON-able). Raises
    :class:`FolderInUse` for a non-empty folder with another recipe unless ``force``."""
    exists = folder.exists() and (not folder.is_dir() or any(folder.iterdir()))
    if exists and not force:
        found = read_recipe(folder) if folder.is_dir() else None
        if found == recipe:
            return "reused"
        what = "was written with other settings" if found is not None else "is not empty"
        raise FolderInUse(f"{folder} {what}; --force rewrites it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        write(staging)
        (staging / RECIPE_FILE).write_text(json.dumps(recipe, sort_keys=True) + "\n", encoding="utf-8")
        if folder.exists() or folder.is_symlink():
            # Moved aside first, removed after: the target is never a mix of old and new files.
            old = staging.with_name(staging.name + ".old")
            folder.rename(old)
            staging.rename(folder)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return "rewritten" if exists else "written"
