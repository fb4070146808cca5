"""Random texts through the Qwen2 tokenizer (InternVL2-1B) against transformers' own Qwen2
tokenizer built from the same files. transformers 5 has no slow Qwen2 class any more, but its
tokenizers-backed one gives the slow tokenizer's results on every golden case (the kit README's
table), so it is an independent second opinion beyond the goldens. The sentencepiece families
have no such reference here: their fast tokenizers differ from the slow ones by design."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from models.tokenizer import Tokenizer

PIECES = [*"abcXYZ019 .,!?'\"\n\r\t  #<>|/_-", "é", "e\u0301", "中文", "😀", "\u200d", "\x00", "'s", "'LL",
          "<|im_end|>", "<img>", "<|endoftext|>", "###", "#include", "  \n\n ", "ＡＢ", "ﬁ", "\u3000", "١٢"]


def test_qwen2_matches_transformers_on_random_texts(kit_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = kit_dir / "tokenizers" / "internvl2-1b-qwen2"
    ref = transformers.AutoTokenizer.from_pretrained(str(folder))
    ours = Tokenizer.load(folder)
    rng = random.Random(7)
    for _ in range(600):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 25)))
        ids = ours.encode(text)
        assert ids == ref(text)["input_ids"], text
        for skip in (True, False):
            assert ours.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip), text
