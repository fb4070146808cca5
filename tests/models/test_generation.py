"""The token pick of one decoding step: the batched greedy path against the row-by-row one."""

from __future__ import annotations

import torch

from models.generation import GenerationParams, Row, _process, next_tokens


def _rows() -> list[Row]:
    stop = frozenset({0})
    return [
        Row(GenerationParams(), stop),
        Row(GenerationParams(repetition_penalty=1.3), stop, ids=[5, 7]),
        Row(GenerationParams(do_sample=True, temperature=0.7, top_k=20, seed=11), stop),
        Row(GenerationParams(), stop),
        Row(GenerationParams(max_new_tokens=3), stop, ids=[1, 2]),
    ]


def test_batched_pick_equals_the_row_by_row_pick() -> None:
    logits = torch.randn(5, 257, generator=torch.Generator().manual_seed(0))
    logits[0, 3] = logits[0, 9] = logits[0].max() + 1  # a tie: both paths take the first index
    expected = [_process(logits[b], row) for b, row in enumerate(_rows())]
    assert next_tokens(logits, _rows()) == expected
    assert expected[0] == 3


def test_rows_that_need_their_own_pick_alone() -> None:
    logits = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    rows = [Row(GenerationParams(do_sample=True, seed=5), frozenset()),
            Row(GenerationParams(repetition_penalty=2.0), frozenset(), ids=[int(logits[1].argmax())])]
    fresh = [Row(GenerationParams(do_sample=True, seed=5), frozenset()),
             Row(GenerationParams(repetition_penalty=2.0), frozenset(), ids=list(rows[1].ids))]
    assert next_tokens(logits, rows) == [_process(logits[b], row) for b, row in enumerate(fresh)]
