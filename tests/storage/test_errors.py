"""Storage errors are adopted by core by their code; storage imports nothing else of ours."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import storage
from core import errors as core_errors
from storage import errors

ROOT = Path(storage.__file__).resolve().parent


@pytest.mark.parametrize(
    ("exc", "core_cls", "retryable"),
    [
        (errors.MediaNotFound("x"), core_errors.MediaNotFound, False),
        (errors.MediaUnreadable("x"), core_errors.MediaUnreadable, False),
        (errors.MediaTooLarge("x"), core_errors.MediaTooLarge, False),
        (errors.UnsupportedMedia("x"), core_errors.UnsupportedMedia, False),
        (errors.UrlNotAllowed("x"), core_errors.UrlNotAllowed, False),
        (errors.TransientError("x", retry_after=3), core_errors.TransientError, True),
        (errors.InvalidManifest("x", line=7), core_errors.InvalidRequest, False),
    ],
)
def test_adopted_by_code(exc: errors.StorageError, core_cls: type, retryable: bool) -> None:
    adopted = core_errors.as_captionq_error(exc)
    assert type(adopted) is core_cls
    assert adopted.code == exc.code and adopted.retryable is retryable is exc.retryable
    assert adopted.message == "x"


def test_storage_imports_nothing_of_ours() -> None:
    ours = {"api", "worker", "jobs", "core", "models", "cli", "migrations"}
    for path in ROOT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ours, f"{path.name} imports {name}"
