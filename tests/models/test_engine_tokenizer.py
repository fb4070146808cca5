"""Tokenizer backends: the kit's toy tokenizer.json and a sentencepiece tokenizer.model with
added special tokens (the InternLM2 layout), loaded from data files only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.errors import CheckpointCorrupt, CheckpointNotFound
from models.tokenizer import Tokenizer


@pytest.mark.parametrize("variant,bos", [("internvl2-internlm2", [1]), ("internvl2-qwen2", [])])
def test_kit_toy_tokenizer(kit_dir: Path, variant: str, bos: list[int]) -> None:
    folder = kit_dir / "models" / variant
    tiny = json.loads((folder / "tiny_tokens.json").read_text())
    tok = Tokenizer.load(folder)
    assert tok.img_context_id == tiny["img_context_token_id"]
    assert (tok.img_start_id, tok.img_end_id) == (tiny["img_start_token_id"], tiny["img_end_token_id"])
    assert tok.pad_id == tiny["special_tokens"][tiny["pad_token"]]
    assert tok.stop_id("<|im_end|>") == tiny["stop_token_id_used_by_chat"]
    # the toy rule: byte b -> 3 + b, specials by id, BOS per the post-processor
    assert tok.encode("A<img>") == [*bos, 3 + ord("A"), tiny["img_start_token_id"]]
    assert tok.decode([3 + ord("h"), 3 + ord("i"), tiny["img_start_token_id"], 495]) == "hi[495]"
    assert tok.decode([3 + 0xE4]) == "\ufffd"  # lone lead byte of a 3-byte sequence
    assert tok.decode([3 + 0xE4, 3 + 0xBD, 3 + 0xA0]) == "你"
    assert tok.decode([tiny["img_start_token_id"]], skip_special_tokens=False) == "<img>"


def test_missing_tokenizer_or_image_token(kit_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFound):
        Tokenizer.load(tmp_path)
    data = json.loads((kit_dir / "models" / "internvl2-qwen2" / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<IMG_CONTEXT>"]
    data["model"]["vocab"].pop("<IMG_CONTEXT>", None)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointCorrupt, match="IMG_CONTEXT"):
        Tokenizer.load(tmp_path)


SPECIALS = ["<|im_end|>", "<|im_start|>", "<img>", "</img>", "<IMG_CONTEXT>"]


@pytest.fixture(scope="module")
def sp_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("sp")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(["the cat sat on the mat", "a dog runs in the park", "hello world",
                                 "describe the image in detail", "user assistant system"] * 40))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=320,
                                   byte_fallback=True, model_type="bpe", bos_id=1, eos_id=2, unk_id=0,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   minloglevel=2)
    n = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).get_piece_size()
    added = {str(n + i): {"content": t, "special": True} for i, t in enumerate(SPECIALS)}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": added, "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>",
        "add_bos_token": True, "tokenizer_class": "InternLM2Tokenizer", "additional_special_tokens": SPECIALS,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
    }))
    (folder / "tokenization_internlm2.py").write_text("raise SystemExit('checkpoint code must not run')\n")
    return folder


def test_sentencepiece_backend(sp_folder: Path) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_folder / "tokenizer.model"))
    tok = Tokenizer.load(sp_folder)
    n = sp.get_piece_size()
    assert tok.img_context_id == n + 4 and tok.stop_id("<|im_end|>") == n and tok.pad_id == 2
    ids = tok.encode("<|im_start|>user\nhello cat<|im_end|><img><IMG_CONTEXT></img>")
    assert ids[:2] == [1, n + 1]
    assert ids[2:-4] == sp.encode("user\nhello cat")
    assert ids[-4:] == [n, n + 2, n + 4, n + 3]
    assert tok.decode(ids) == "user\nhello cat"
    assert tok.decode([*sp.encode("the dog"), n]) == "the dog"
    assert tok.decode([n], skip_special_tokens=False) == "<|im_end|>"
    # text outside the training vocabulary goes through byte fallback and back
    assert tok.decode(tok.encode("zebra 你好")) == "zebra 你好"


def test_slow_family_wins_over_tokenizer_json(sp_folder: Path, kit_dir: Path, tmp_path: Path) -> None:
    # InternVL loads tokenizers with use_fast=False: a known slow class ignores tokenizer.json
    folder = tmp_path / "both"
    shutil.copytree(sp_folder, folder)
    shutil.copy(kit_dir / "models" / "internvl2-qwen2" / "tokenizer.json", folder / "tokenizer.json")
    n = Tokenizer.load(sp_folder).img_context_id
    assert Tokenizer.load(folder).img_context_id == n
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # no slow class: the fast file
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.load(folder).img_context_id == 1093
