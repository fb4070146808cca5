"""Prompt checks against ``prompts/prompts.json``: every template and every case in it.

Templates the registry does not know fail their ``template`` check (the engine would refuse such
a checkpoint with UnknownTemplate), but their cases are still run with a template built from the
kit's record, so the query-building rules are checked for them too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from models import prompts as PR
from models.conformance import Reporter, expect, expect_eq, load_json
from models.errors import EngineError, UnknownTemplate

_BLOCK = re.compile(re.escape(PR.IMG_START_TOKEN) + f"((?:{re.escape(PR.IMG_CONTEXT_TOKEN)})*)"
                    + re.escape(PR.IMG_END_TOKEN))


def run_prompt_checks(kit: Path, rep: Reporter) -> None:
    meta = load_json(kit / "prompts" / "prompts.json")
    for name, rec in meta.get("templates", {}).items():
        template = _from_record(name, rec)
        with rep.check(f"prompts/{name}/template"):
            try:
                known = PR.get_template(name)
            except UnknownTemplate:
                expect(False, f"template {name!r} is not registered in models.prompts")
            else:
                _compare_template(known, rec)
                template = known
        for case in rec.get("cases", []):
            with rep.check(f"prompts/{name}/{case['id']}"):
                _check_case(template, rec, case)


def _from_record(name: str, rec: dict[str, Any]) -> PR.Template:
    return PR.Template(name=name, system_template=rec["system_template"],
                       system_message=rec.get("model_system_message", rec["system_message"]),
                       roles=(rec["roles"][0], rec["roles"][1]), sep=rec["sep"],
                       sep_style=rec.get("sep_style", "MPT"), conversation_stop_str=rec.get("stop_str"))


def _compare_template(t: PR.Template, rec: dict[str, Any]) -> None:
    expect_eq(t.system_template, rec["system_template"], "system_template")
    expect_eq(t.system_message, rec.get("model_system_message", rec["system_message"]), "system message")
    expect_eq(list(t.roles), list(rec["roles"]), "roles")
    expect_eq(t.sep, rec["sep"], "sep")
    expect_eq(t.sep_style, rec.get("sep_style", "MPT"), "sep_style")
    if "stop_token_string_used_by_chat" in rec:
        expect_eq(t.stop_str, rec["stop_token_string_used_by_chat"], "stop string used by chat()")


def _blocks(query: str) -> list[int]:
    return [len(m.group(1)) // len(PR.IMG_CONTEXT_TOKEN) for m in _BLOCK.finditer(query)]


def _check_case(t: PR.Template, rec: dict[str, Any], c: dict[str, Any]) -> None:
    nit = rec.get("num_image_token", PR.NUM_IMAGE_TOKEN)
    system = c.get("system_message_override")
    if "eos_token_requested" in c:
        expect_eq(t.stop_str, c["eos_token_requested"], "eos token string")
    if c.get("call") == "batch_chat":
        queries = PR.build_batch_queries(t, c["questions"], c.get("num_patches_list"), num_image_token=nit,
                                         system_message=system)
        expect_eq(len(queries), len(c["queries"]), "number of queries")
        for i, (got, want) in enumerate(zip(queries, c["queries"], strict=True)):
            expect(got == want, f"query {i} differs: {_diff(got, want)}")
        if "counts_img_context" in c:
            expect_eq([q.count(PR.IMG_CONTEXT_TOKEN) for q in queries], c["counts_img_context"],
                      "IMG_CONTEXT counts")
        return
    n_tiles = c.get("n_tiles_in_pixel_values") or 0
    npl = c.get("num_patches_list")
    if npl is None:
        npl = [n_tiles] if n_tiles else []
    history = None if c.get("history_in") is None else [tuple(h) for h in c["history_in"]]
    kwargs = dict(num_image_token=nit, system_message=system, num_tiles=n_tiles or None)
    if c.get("error"):
        try:
            PR.build_query(t, c["question"], history, npl, **kwargs)  # type: ignore[arg-type]
        except EngineError:
            return
        expect(False, f"expected an error like the official {c['error']!r}, got a query")
    query = PR.build_query(t, c["question"], history, npl, **kwargs)  # type: ignore[arg-type]
    expect(query == c["query"], f"query differs: {_diff(query, c['query'])}")
    counted = (("count_img_context", PR.IMG_CONTEXT_TOKEN), ("count_img_start", PR.IMG_START_TOKEN),
               ("count_img_end", PR.IMG_END_TOKEN), ("count_image_placeholder_left", PR.IMAGE_PLACEHOLDER))
    for key, token in counted:
        if key in c:
            expect_eq(query.count(token), c[key], key)
    if "image_blocks_tokens" in c:
        expect_eq(_blocks(query), c["image_blocks_tokens"], "IMG_CONTEXT per image block")
    if "history_out" in c and c.get("response") is not None:
        prepared = PR.prepare_question(c["question"], has_images=bool(npl), history=history)
        got_hist = [list(h) for h in PR.next_history(history, prepared, c["response"])]
        expect_eq(got_hist, c["history_out"], "history after the round")


def _diff(got: str, want: str) -> str:
    i = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    lo, hi = max(0, i - 30), i + 40
    return f"first difference at char {i}: got {got[lo:hi]!r}, expected {want[lo:hi]!r}"
