"""Tokenizer checks against ``tokenizers/goldens.json``: the official slow tokenizers' outputs.

For every tokenizer record (its folder next to goldens.json is loaded with
``Tokenizer.load(folder, require_image_tokens=False)``):

- ``facts``: bos/eos/pad/unk ids, whether BOS is added, the chat stop id, the ids that
  ``skip_special_tokens`` removes, every added token's id;
- every ``cases[]`` entry: ``ids``, ``ids_no_special``, ``decode_skip_special``,
  ``decode_keep_special``. A case's ``other_versions`` value is accepted instead only when its
  environment names the sentencepiece version installed here (the PASS line says so);
- every ``decode_cases[]`` entry: both decodes and ``chat_response`` (the engine's answer rule);
- every ``incremental_decode_cases[]`` entry: the decode of each prefix (the first
  ``stable_prefix_len`` prefixes when the kit gives it), and the streaming deltas of
  :class:`models.text_stream.TextStream` after each id against what the official decode of
  that prefix allows (:func:`visible_text`), ending with exactly the chat response;
- every ``batch_cases[]`` entry: the queries batch_chat() builds, then left-padded
  ``input_ids`` / ``attention_mask`` with the tokenizer's pad id, as the engine pads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from models import prompts as PR
from models.conformance import CheckFailed, Reporter, expect, expect_eq, load_json
from models.text_stream import TextStream, visible_text
from models.tokenizer import Tokenizer

_CASE_FIELDS = ("ids", "ids_no_special", "decode_skip_special", "decode_keep_special")


def run_tokenizer_checks(kit: Path, rep: Reporter) -> None:
    root = kit / "tokenizers"
    gold = load_json(root / "goldens.json")
    for name, rec in gold.get("tokenizers", {}).items():
        prefix = f"tokenizers/{name}"
        folder = root / str(rec.get("folder", name))
        tok: Tokenizer | None = None
        with rep.check(f"{prefix}/load") as notes:
            tok = Tokenizer.load(folder, require_image_tokens=False)
            notes.append(tok.backend)
        if tok is None:
            continue
        with rep.check(f"{prefix}/facts"):
            _check_facts(tok, rec.get("facts", {}))
        for case in rec.get("cases", []):
            with rep.check(f"{prefix}/case/{case['id']}") as notes:
                _check_case(tok, case, notes)
        template = _template(rec)
        for case in rec.get("decode_cases", []):
            with rep.check(f"{prefix}/decode/{case['id']}"):
                _check_decode_case(tok, template, rec, case)
        for case in rec.get("incremental_decode_cases", []):
            with rep.check(f"{prefix}/incremental/{case['id']}") as notes:
                _check_prefixes(tok, case, notes)
            if "prefix_decodes_skip_special" in case:  # what a stream of chat() text shows
                with rep.check(f"{prefix}/stream/{case['id']}"):
                    _check_stream(tok, template, rec, case)
        for case in rec.get("batch_cases", []):
            with rep.check(f"{prefix}/batch/{case['id']}"):
                _check_batch(tok, template, case)


def _template(rec: dict[str, Any]) -> PR.Template | None:
    name = rec.get("template")
    return PR.get_template(name) if name else None


def _stop_str(template: PR.Template | None, rec: dict[str, Any]) -> str:
    facts = rec.get("facts", {})
    if "chat_stop_token" in facts:
        return str(facts["chat_stop_token"])
    if template is None:
        raise CheckFailed("the record names neither a template nor a chat_stop_token")
    return template.stop_str


def _check_facts(tok: Tokenizer, facts: dict[str, Any]) -> None:
    for name in ("bos", "eos", "pad", "unk"):
        if f"{name}_token_id" in facts:
            token = facts.get(f"{name}_token")
            got = tok.token_id(token) if token else None
            expect_eq(got, facts[f"{name}_token_id"], f"{name}_token id")
    if "pad_token_id" in facts and facts["pad_token_id"] is not None:
        expect_eq(tok.pad_id, facts["pad_token_id"], "pad id the engine pads with")
    if "adds_bos_by_default" in facts:
        with_special, without = tok.encode("a"), tok.encode("a", add_special_tokens=False)
        adds = with_special[:1] == [tok.bos_id] and with_special[1:] == without
        expect_eq(adds, facts["adds_bos_by_default"], "adds BOS by default")
    if "chat_stop_token_id" in facts:
        expect_eq(tok.stop_id(facts["chat_stop_token"]), facts["chat_stop_token_id"], "chat stop id")
    added = facts.get("added_tokens", {})
    for token, entry in added.items():
        expect_eq(tok.token_id(token), entry["id"], f"id of added token {token!r}")
    if "all_special_ids_removed_by_skip_special_tokens" in facts:
        removed = set(facts["all_special_ids_removed_by_skip_special_tokens"])
        candidates = removed | {e["id"] for e in added.values()}
        dropped = {i for i in candidates if tok.decode([i], True) == "" and tok.decode([i], False) != ""}
        expect_eq(sorted(dropped), sorted(removed), "ids removed by skip_special_tokens")
    if "len" in facts:
        expect_eq(tok.vocab_size, facts["len"], "len(tokenizer)")
    if "vocab_size" in facts and tok.base_vocab_size is not None:
        expect_eq(tok.base_vocab_size, facts["vocab_size"], "vocab_size (without added tokens)")


def _installed_sentencepiece() -> str:
    try:
        from importlib.metadata import version

        return version("sentencepiece")
    except Exception:  # not installed: no other_versions entry can apply
        return ""


def _alternatives(case: dict[str, Any], field: str) -> list[tuple[str, Any]]:
    """``other_versions`` values of ``field`` from environments with this sentencepiece."""
    sp = _installed_sentencepiece()
    out = []
    for other in case.get("other_versions", []):
        m = re.search(r"sentencepiece (\S+)", str(other.get("environment", "")))
        if field in other and m and m.group(1) == sp:
            out.append((str(other["environment"]), other[field]))
    return out


def _check_case(tok: Tokenizer, case: dict[str, Any], notes: list[str]) -> None:
    got = {
        "ids": lambda: tok.encode(case["text"]),
        "ids_no_special": lambda: tok.encode(case["text"], add_special_tokens=False),
        "decode_skip_special": lambda: tok.decode(case["ids"], skip_special_tokens=True),
        "decode_keep_special": lambda: tok.decode(case["ids"], skip_special_tokens=False),
    }
    checked = 0
    for field in _CASE_FIELDS:
        if field not in case:
            continue
        value = got[field]()
        checked += 1
        if value == case[field]:
            continue
        alt = [env for env, v in _alternatives(case, field) if v == value]
        if not alt:
            expect_eq(value, case[field], field)
        notes.append(f"{field} as under {alt[0]}")
    expect(checked > 0, "the case has none of the fields " + ", ".join(_CASE_FIELDS))


def _check_decode_case(tok: Tokenizer, template: PR.Template | None, rec: dict[str, Any],
                       case: dict[str, Any]) -> None:
    skip = tok.decode(case["ids"], skip_special_tokens=True)
    if "decode_skip_special" in case:
        expect_eq(skip, case["decode_skip_special"], "decode_skip_special")
    if "decode_keep_special" in case:
        expect_eq(tok.decode(case["ids"], skip_special_tokens=False), case["decode_keep_special"],
                  "decode_keep_special")
    if "chat_response" in case:
        if template is not None:
            answer = PR.clean_response(template, skip)
        else:
            answer = skip.split(_stop_str(template, rec))[0].strip()
        expect_eq(answer, case["chat_response"], "chat_response")


def _check_prefixes(tok: Tokenizer, case: dict[str, Any], notes: list[str]) -> None:
    ids = case["ids"]
    modes = {"prefix_decodes_skip_special": True, "prefix_decodes_keep_special": False}
    present = [key for key in modes if key in case]
    expect(bool(present), "the case has no prefix_decodes_skip_special / prefix_decodes_keep_special")
    for key in present:
        prefixes = case[key]
        expect_eq(len(prefixes), len(ids), f"number of {key}")
        n = int(case.get("stable_prefix_len", len(prefixes)))
        for k in range(1, n + 1):
            expect_eq(tok.decode(ids[:k], skip_special_tokens=modes[key]), prefixes[k - 1],
                      f"{key}: decode(ids[:{k}])")
        if n < len(prefixes):
            notes.append(f"{key}: first {n} of {len(prefixes)} prefixes (stable_prefix_len)")


def _check_stream(tok: Tokenizer, template: PR.Template | None, rec: dict[str, Any],
                  case: dict[str, Any]) -> None:
    stop = _stop_str(template, rec)
    prefixes = case["prefix_decodes_skip_special"]
    n = int(case.get("stable_prefix_len", len(prefixes)))
    deltas: list[str] = []
    stream = TextStream(tok, stop, deltas.append)
    shown = ""
    for k, token_id in enumerate(case["ids"][:n], 1):
        stream(int(token_id))
        allowed = visible_text(prefixes[k - 1], stop, tok.cleans_up_spaces)
        if allowed is not None:
            expect(allowed.startswith(shown), f"the official decode of {k} ids, {allowed!r}, no longer "
                   f"extends the text already streamed, {shown!r}")
            shown = allowed
        expect_eq("".join(deltas), shown, f"streamed text after {k} ids")
    if n == len(prefixes):
        final = prefixes[-1].split(stop)[0].strip()
        stream.finish(final)
        expect_eq("".join(deltas), final, "streamed text at the end (the chat response)")


def _check_batch(tok: Tokenizer, template: PR.Template | None, case: dict[str, Any]) -> None:
    queries = case["queries"]
    if template is not None and "questions" in case:
        built = PR.build_batch_queries(template, case["questions"], case.get("num_patches_list"))
        expect(built == queries, "batch_chat() queries differ from the kit's")
    if "pad_token_id" in case:
        expect_eq(tok.pad_id, case["pad_token_id"], "pad id")
    expect_eq(case.get("padding_side", "left"), "left", "padding side the engine uses")
    rows = [tok.encode(q) for q in queries]
    width = max(len(r) for r in rows)
    ids = [[tok.pad_id] * (width - len(r)) + r for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    expect_eq(ids, case["input_ids"], "input_ids")
    expect_eq(mask, case["attention_mask"], "attention_mask")
