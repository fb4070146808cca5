"""Fetching a checkpoint from the Hugging Face hub into huggingface_hub's own cache.

Only data files come down (config and tokenizer files, safetensors weights; never ``*.py`` nor
pickled ``*.bin``), with ``huggingface_hub.snapshot_download``: the standard cache layout, so
``hf``, transformers and a later ``captionq`` run all find them. A progress bar is shown when
stderr is a terminal. Downloads are refused, with one clear line (:class:`DownloadRefused`),
when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached; a hub that answers but has no such
model gives :class:`CheckpointNotFound`. ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN``
are read when a download starts (not when huggingface_hub was imported).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from models.errors import CheckpointNotFound, DownloadRefused

log = logging.getLogger(__name__)

#: Files fetched: config, tokenizer (sentencepiece, BPE, tiktoken) and safetensors weights.
DATA_PATTERNS = ("*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt")
_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def hub_cache(cache_dir: Path | None = None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, cache_dir: Path | None = None) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (None when it is not in the cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        # the same patterns as the download: huggingface_hub calls a snapshot incomplete when a
        # file of its tree listing that the patterns select is missing
        return Path(snapshot_download(repo_id, cache_dir=hub_cache(cache_dir), local_files_only=True,
                                      allow_patterns=list(DATA_PATTERNS)))
    except LocalEntryNotFoundError:
        return None


def download_model(repo_id: str, *, cache_dir: Path | None = None, progress: bool | None = None) -> Path:
    """Fetch the data files of ``repo_id`` (cached ones are kept); returns the snapshot folder.
    ``progress``: show a progress bar (default: when stderr is a terminal)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    cache = hub_cache(cache_dir)
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if hub_offline():
        raise DownloadRefused(f"model {repo_id!r} is not in the Hugging Face cache at {cache} and "
                              "HF_HUB_OFFLINE is set; download it where the hub is reachable or unset it")
    show = sys.stderr.isatty() if progress is None else progress
    was_disabled = are_progress_bars_disabled()
    if not show:
        disable_progress_bars()
    log.info("downloading %s from %s into %s", repo_id, endpoint, cache)
    try:
        folder = snapshot_download(repo_id, cache_dir=cache, allow_patterns=list(DATA_PATTERNS),
                                   endpoint=endpoint, token=os.environ.get("HF_TOKEN") or None)
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
        raise CheckpointNotFound(f"the hub at {endpoint} has no model {repo_id!r} you can read "
                                 f"({type(exc).__name__})") from exc
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, OSError) as exc:
        # huggingface_hub reports an unreachable hub as LocalEntryNotFoundError (it fell back to
        # the cache and found nothing); connection errors are OSErrors
        raise DownloadRefused(f"cannot download {repo_id!r}: the hub at {endpoint} is not reachable "
                              f"({_first_line(exc)})") from exc
    except HfHubHTTPError as exc:
        raise DownloadRefused(f"cannot download {repo_id!r} from {endpoint}: {_first_line(exc)}") from exc
    except Exception as exc:  # httpx transport errors are not OSErrors
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise DownloadRefused(f"cannot download {repo_id!r}: the hub at {endpoint} is not reachable "
                                  f"({_first_line(exc)})") from exc
        raise
    finally:
        if not show and not was_disabled:
            enable_progress_bars()
    return Path(folder)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
