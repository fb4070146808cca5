"""Conformance runner: checks this engine against an InternVL2 conformance kit.

``python -m models.conformance KIT_DIR [--only preprocess,video,prompts,numerics,tokenizers]``

A kit is a folder laid out like ``tests/data/conformance`` (``preprocess/``, ``video/``,
``prompts/``, ``models/<variant>/`` + ``goldens/<variant>/``, ``tokenizers/``). Every expectation
is read from the kit, so kits with other images, videos, templates, variants or tokenizers work
as long as the layout is the same. Each part present in the kit is checked; an absent part is
named on an ``INFO`` line (a kit holding only ``tokenizers/`` is fine). Each check prints
``PASS name`` or ``FAIL name: detail``; a line that compares nothing (a diagnostic) prints as
``INFO name: detail`` and is not counted. The last line is ``N passed, M failed``; the exit
status is non-zero when anything failed.

The numerics part is delegated to ``models.conformance.numerics_checks.run_numerics_checks``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np

#: ``report(name, ok, detail)``; ``ok=None`` is an INFO line (compares nothing, not counted)
Report = Callable[[str, bool | None, str], None]
PARTS = ("preprocess", "video", "prompts", "numerics", "tokenizers")


def sha256_array(a: np.ndarray) -> str:
    """The kit's array hash: SHA-256 of the C-contiguous little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class CheckFailed(Exception):
    """Raised inside a check to fail it with a message."""


def expect(cond: bool, detail: str) -> None:
    if not cond:
        raise CheckFailed(detail)


def expect_eq(got: object, want: object, what: str) -> None:
    if got != want:
        raise CheckFailed(f"{what}: got {_short(got)}, expected {_short(want)}")


def _short(v: object, limit: int = 160) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


class Reporter:
    """Collects results and prints one line per check as it happens."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.passed = 0
        self.failed = 0
        self.infos = 0

    def __call__(self, name: str, ok: bool | None, detail: str = "") -> None:
        if ok is None:
            self.infos += 1
            line = f"INFO {name}" + (f": {' '.join(detail.split())}" if detail else "")
        elif ok:
            self.passed += 1
            line = f"PASS {name}" + (f" ({detail})" if detail else "")
        else:
            self.failed += 1
            line = f"FAIL {name}: {' '.join(detail.split()) or 'failed'}"
        print(line, file=self.out, flush=True)

    @contextmanager
    def check(self, name: str, note: str = "") -> Iterator[list[str]]:
        """``with rep.check(name) as notes:`` — passes unless the body raises; a CheckFailed
        gives its message, any other exception its type and message (a broken kit or a crash
        fails that one check, never the run). Strings appended to ``notes`` go on a PASS line."""
        notes: list[str] = [note] if note else []
        try:
            yield notes
        except CheckFailed as e:
            self(name, False, str(e))
        except Exception as e:
            tb = traceback.extract_tb(e.__traceback__)[-1]
            self(name, False, f"{type(e).__name__}: {e} (at {Path(tb.filename).name}:{tb.lineno})")
        else:
            self(name, True, "; ".join(n for n in notes if n))

    def summary(self) -> str:
        info = f" ({self.infos} INFO lines not counted)" if self.infos else ""
        return f"{self.passed} passed, {self.failed} failed{info}"


def _present(kit: Path) -> dict[str, bool]:
    return {
        "preprocess": (kit / "preprocess" / "preprocess.json").is_file(),
        "video": (kit / "video" / "video.json").is_file(),
        "prompts": (kit / "prompts" / "prompts.json").is_file(),
        "numerics": bool(numerics_variants(kit)),
        "tokenizers": (kit / "tokenizers" / "goldens.json").is_file(),
    }


def numerics_variants(kit: Path) -> list[str]:
    """Variants with both ``models/<variant>/`` and ``goldens/<variant>/``."""
    models_dir, goldens_dir = kit / "models", kit / "goldens"
    if not models_dir.is_dir() or not goldens_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and (goldens_dir / p.name).is_dir())


def run_numerics(kit: Path, rep: Reporter) -> None:
    try:
        from models.conformance.numerics_checks import run_numerics_checks
    except ImportError as e:
        rep("numerics", False, f"models.conformance.numerics_checks is not available ({e})")
        return
    for variant in numerics_variants(kit):
        try:
            run_numerics_checks(kit, variant, rep)
        except Exception as e:  # a crash fails the variant, the run goes on
            rep(f"numerics/{variant}", False, f"run_numerics_checks raised {type(e).__name__}: {e}")


def _runner(part: str) -> Callable[[Path, Reporter], None]:
    """Imported on use, so a kit with few parts needs only their dependencies."""
    if part == "preprocess":
        from models.conformance.preprocess_checks import run_preprocess_checks

        return run_preprocess_checks
    if part == "video":
        from models.conformance.video_checks import run_video_checks

        return run_video_checks
    if part == "prompts":
        from models.conformance.prompt_checks import run_prompt_checks

        return run_prompt_checks
    if part == "tokenizers":
        from models.conformance.tokenizer_checks import run_tokenizer_checks

        return run_tokenizer_checks
    return run_numerics


def run_kit(kit_dir: Path | str, only: set[str] | None = None, out: TextIO | None = None) -> Reporter:
    """Run every part present in the kit (or only those named); returns the reporter (counts)."""
    kit = Path(kit_dir)
    rep = Reporter(out)
    if not kit.is_dir():
        rep("kit", False, f"{kit} is not a directory")
        return rep
    present = _present(kit)
    for part in PARTS:
        if only is not None and part not in only:
            continue
        if not present[part]:
            if only is not None:  # asked for explicitly: its absence is a failure
                rep(part, False, f"the kit at {kit} has no {part} data")
            else:
                rep(part, None, f"absent from the kit at {kit}, not checked")
            continue
        try:
            _runner(part)(kit, rep)
        except Exception as e:  # e.g. an unreadable JSON file: fail the part, keep going
            rep(part, False, f"{type(e).__name__}: {e}")
    if rep.passed + rep.failed == 0:
        rep("kit", False, f"nothing to check in {kit}")
    return rep
