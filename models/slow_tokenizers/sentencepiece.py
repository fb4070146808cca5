"""The sentencepiece families: ``InternLM2Tokenizer`` (remote code) and ``LlamaTokenizer`` (Phi-3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.slow_tokenizers.base import SPIECE_UNDERLINE, SlowTokenizer, clean_up_tokenization, token_str


def _without_dummy_prefix(model: bytes) -> bytes:
    """The serialized ModelProto with ``normalizer_spec.add_dummy_prefix = false`` (what
    LlamaTokenizer does with protobuf when ``legacy=False``), edited on the wire format."""

    def varint(buf: bytes, i: int) -> tuple[int, int]:
        shift = value = 0
        while True:
            byte = buf[i]
            value |= (byte & 0x7F) << shift
            i += 1
            if byte < 0x80:
                return value, i
            shift += 7

    def encode_varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    def fields(buf: bytes) -> list[tuple[int, int, bytes]]:
        out, i = [], 0
        while i < len(buf):
            key, j = varint(buf, i)
            wire = key & 7
            if wire == 0:
                _, end = varint(buf, j)
            elif wire == 1:
                end = j + 8
            elif wire == 5:
                end = j + 4
            elif wire == 2:
                length, j2 = varint(buf, j)
                end = j2 + length
            else:
                raise ValueError(f"unsupported protobuf wire type {wire}")
            out.append((key >> 3, wire, buf[i:end]))
            i = end
        return out

    result = bytearray()
    done = False
    for number, wire, raw in fields(model):
        if number == 3 and wire == 2 and not done:  # normalizer_spec
            key_end = varint(raw, 0)[1]
            body_start = varint(raw, key_end)[1]
            body = raw[body_start:]
            kept = b"".join(r for n, _w, r in fields(body) if n != 3)  # drop add_dummy_prefix
            body = kept + bytes([3 << 3]) + b"\x00"  # add_dummy_prefix = false
            raw = bytes([3 << 3 | 2]) + encode_varint(len(body)) + body
            done = True
        result += raw
    return bytes(result)


class _SentencePieceSlow(SlowTokenizer):
    def __init__(self, config: dict[str, Any], folder: Path, *, dummy_prefix: bool = True) -> None:
        import sentencepiece as spm

        super().__init__(config, folder)
        data = (folder / "tokenizer.model").read_bytes()
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(data if dummy_prefix else _without_dummy_prefix(data))
        self.add_bos = bool(config.get("add_bos_token", True))
        self.add_eos = bool(config.get("add_eos_token", False))

    def _piece_id(self, token: str) -> int | None:
        tid = int(self.sp.piece_to_id(token))
        return tid if self.sp.id_to_piece(tid) == token else None

    def token_to_id(self, token: str) -> int | None:
        if token in self.added:
            return self.added[token]
        tid = int(self.sp.piece_to_id(token))
        return tid  # sentencepiece maps unknown pieces to unk, as the slow tokenizers do

    def _id_piece(self, tid: int) -> str:
        return str(self.sp.id_to_piece(tid)) if 0 <= tid < self.sp.get_piece_size() else ""

    def base_vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    def _sp_decode(self, pieces: list[str]) -> str:
        return str(self.sp.decode_pieces(pieces)) if pieces else ""


class InternLM2Slow(_SentencePieceSlow):
    """The remote-code ``InternLM2Tokenizer``: sentencepiece per span, BOS by default; decoding
    always cleans up tokenization spaces (although the config says not to) and puts a space
    before a base-vocabulary special token that follows ordinary text."""

    cleans_up = True

    def __init__(self, config: dict[str, Any], folder: Path) -> None:
        super().__init__(config, folder)
        self.finish_init()

    def _tokenize(self, text: str) -> list[str]:
        return [str(p) for p in self.sp.encode(text, out_type=str)]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        current: list[str] = []
        out = ""
        prev_is_special = False
        for tok in tokens:
            if tok in self.all_special_tokens:
                if not prev_is_special:
                    out += " "
                out += self._sp_decode(current) + tok
                prev_is_special = True
                current = []
            else:
                current.append(tok)
                prev_is_special = False
        out += self._sp_decode(current)
        out = clean_up_tokenization(out)
        # _maybe_add_prefix_space always adds " " (it compares a token string with a set of
        # ids), and the [1:] below removes it again
        return (" " + out)[1:]


class LlamaSlow(_SentencePieceSlow):
    """``LlamaTokenizer`` (Phi-3-mini, the LLM of InternVL2-4B), ``legacy`` as configured."""

    def __init__(self, config: dict[str, Any], folder: Path) -> None:
        legacy = config.get("legacy")
        self.legacy = True if legacy is None else bool(legacy)
        super().__init__(config, folder, dummy_prefix=self.legacy)
        self.add_prefix_space = bool(config.get("add_prefix_space", True))
        self.unk = token_str(config.get("unk_token")) or "<unk>"
        self.unk_len = len(self.sp.encode(self.unk, out_type=str))
        self.finish_init()

    def tokenize(self, text: str) -> list[str]:
        if self.legacy or not text:
            return super().tokenize(text)
        text = text.replace(SPIECE_UNDERLINE, " ")
        if self.add_prefix_space:
            text = SPIECE_UNDERLINE + text
        tokens = super().tokenize(text)
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]
        return tokens

    def _tokenize(self, text: str) -> list[str]:
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return [str(p) for p in self.sp.encode(text, out_type=str)]
        # the unk prefix keeps sentencepiece from treating the leading space as a dummy prefix
        tokens = [str(p) for p in self.sp.encode(self.unk + text, out_type=str)]
        return tokens[self.unk_len:] if len(tokens) >= self.unk_len else tokens

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        tokens = list(tokens)
        if tokens[0].startswith(SPIECE_UNDERLINE) and self.add_prefix_space:
            tokens[0] = tokens[0][1:]
        current: list[str] = []
        out = ""
        prev_is_special = False
        for i, tok in enumerate(tokens):
            if tok in self.all_special_tokens:
                if not prev_is_special and i != 0 and self.legacy:
                    out += " "
                out += self._sp_decode(current) + tok
                prev_is_special = True
                current = []
            else:
                lone = prev_is_special and i == 1 and not tok.startswith(SPIECE_UNDERLINE)
                if lone and self.add_prefix_space:
                    out += " "
                current.append(tok)
                prev_is_special = False
        return out + self._sp_decode(current)
