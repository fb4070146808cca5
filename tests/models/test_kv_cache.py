"""ReservedLayer keeps exactly what transformers' DynamicLayer keeps, through every operation the
generation loop (and transformers) applies to a cache layer."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from models.kv_cache import ReservedLayer, reserved_cache

G = torch.Generator().manual_seed(0)


def _kv(b: int, t: int, h: int = 2, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, h, t, d, generator=G), torch.randn(b, h, t, d, generator=G)


def _same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert a[0].shape == b[0].shape and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_prefill_steps_and_a_finished_row_match_dynamic_layer() -> None:
    ref, res = DynamicLayer(), ReservedLayer(capacity=12)
    kv = _kv(3, 7)
    _same(ref.update(*kv), res.update(*kv))
    first_storage = res.keys.untyped_storage().data_ptr()
    for _ in range(3):
        kv = _kv(3, 1)
        _same(ref.update(*kv), res.update(*kv))
    assert res.keys.untyped_storage().data_ptr() == first_storage  # written in place, no copies
    assert res.get_seq_length() == ref.get_seq_length() == 10
    keep = torch.tensor([0, 2])
    ref.batch_select_indices(keep)
    res.batch_select_indices(keep)
    for _ in range(2):
        kv = _kv(2, 1)
        _same(ref.update(*kv), res.update(*kv))
    assert res.get_seq_length() == 12


def test_outgrowing_the_reservation_doubles_it() -> None:
    ref, res = DynamicLayer(), ReservedLayer(capacity=4)
    for t in (3, 1, 1, 1, 5):
        kv = _kv(2, t)
        _same(ref.update(*kv), res.update(*kv))
    assert res.get_seq_length() == 11


def test_a_prefill_longer_than_the_reservation() -> None:
    ref, res = DynamicLayer(), ReservedLayer(capacity=2)
    for t in (5, 1):
        kv = _kv(2, t)
        _same(ref.update(*kv), res.update(*kv))


def test_crop_and_reset_are_followed() -> None:
    ref, res = DynamicLayer(), ReservedLayer(capacity=16)
    for layer in (ref, res):
        torch.manual_seed(1)
        layer.update(torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4))
        layer.crop(-2)
    kv = _kv(1, 1)
    _same(ref.update(*kv), res.update(*kv))
    ref.reset()
    res.reset()
    kv = _kv(4, 3)  # a new batch size after the reset
    _same(ref.update(*kv), res.update(*kv))


def test_reserved_cache_replaces_only_full_attention_layers() -> None:
    from transformers import Qwen2Config

    cfg = Qwen2Config(num_hidden_layers=3, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=32, vocab_size=32, use_sliding_window=True, sliding_window=8,
                      max_window_layers=1,
                      layer_types=["full_attention", "sliding_attention", "full_attention"])
    cache = reserved_cache(cfg, 64)
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert kinds[0] == kinds[2] == "ReservedLayer" and kinds[1] != "ReservedLayer"
