"""Image features kept between requests that show the model the same media.

A job with several tasks, several rounds or several grounding phrases hands the engine one
request per answer, all with the same ``pixel_values``. Each such request carries the same
``ChatRequest.vision_key``; the engine then runs the ViT for the first of them and takes the
features of the others from here (or from a neighbour in the same batch), so the media goes
through the vision tower once per job, whatever the number of answers.

The cache is bounded by tiles (``max_tiles``): past it the least recently used entries go. An
evicted entry only costs a second ViT pass, never a wrong answer: an entry is used only for a
request whose ``pixel_values`` has its tile count, and the key's owner guarantees that requests
with one key carry the same pixels. The owner releases the key when it needs no more answers
(``release``), which frees the memory at once.

Thread-safe: the engine thread reads and fills it, a task thread (or the engine process's
message reader) releases keys.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class VisionStats:
    """What the vision tower did: ``passes`` calls of the ViT over ``tiles`` tiles in all, and
    ``reused_tiles`` tiles whose features came from the cache or a batch neighbour instead."""

    passes: int = 0
    tiles: int = 0
    reused_tiles: int = 0


class VisionCache:
    def __init__(self, max_tiles: int = 256) -> None:
        self.max_tiles = max(0, int(max_tiles))
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._tiles = 0
        self._lock = threading.Lock()

    def get(self, key: str, tiles: int) -> torch.Tensor | None:
        """The features stored for ``key`` if they cover ``tiles`` tiles (else None)."""
        with self._lock:
            feats = self._entries.get(key)
            if feats is None or int(feats.shape[0]) != tiles:
                return None
            self._entries.move_to_end(key)
            return feats

    def put(self, key: str, feats: torch.Tensor) -> None:
        """Keep ``feats`` (``[tiles, tokens, hidden]``) for ``key``, evicting the least recently
        used entries beyond ``max_tiles``. Features larger than the whole cache are not kept."""
        tiles = int(feats.shape[0])
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._tiles -= int(old.shape[0])
            if tiles > self.max_tiles:
                return
            self._entries[key] = feats
            self._tiles += tiles
            while self._tiles > self.max_tiles:
                _, evicted = self._entries.popitem(last=False)
                self._tiles -= int(evicted.shape[0])

    def release(self, key: str) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._tiles -= int(old.shape[0])

    @property
    def tiles(self) -> int:
        return self._tiles

    def __len__(self) -> int:
        return len(self._entries)


class PrefixCache:
    """The shared start of the prompts of one vision key — the tokens up to the last ``</img>``
    (``Engine.image_prefix_length``) — with its keys and values per layer (``[1, H, n, D]``),
    so that the key's other requests prefill only the rest of their prompt
    (``Engine.prefill_after``). Bounded by positions (``max_tokens``), least recently used out;
    released with the key."""

    def __init__(self, max_tokens: int = 16384) -> None:
        self.max_tokens = max(0, int(max_tokens))
        self._entries: OrderedDict[str, tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = \
            OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()

    def get(self, key: str, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The keys and values stored for ``key`` if its prefix is exactly ``ids``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != ids:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def put(self, key: str, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        with self._lock:
            if key in self._entries or len(ids) > self.max_tokens:
                return
            self._entries[key] = (list(ids), layers)
            self._tokens += len(ids)
            while self._tokens > self.max_tokens:
                _, (old, _) = self._entries.popitem(last=False)
                self._tokens -= len(old)

    def release(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._tokens -= len(entry[0])

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["PrefixCache", "VisionCache", "VisionStats"]
