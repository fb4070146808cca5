"""An instant model for the queue-overhead benchmark only ("a job with an instant
model"): the engine's network call is replaced by an answer that costs nothing, so what is left
of a job's latency is the service's own path.

Everything around the network stays real: the checkpoint is loaded, ``Engine.prepare`` builds
and tokenises the prompt and checks the token budget, the batcher forms the batch on its thread,
streaming callbacks and the result/history bookkeeping run. Only ``Engine._run_group_unsafe``
(embed, ViT, LLM decode loop) becomes "every row answers the stop token at once".

Nothing in the service imports this. The benchmark's worker subprocess gets it through
``bench/bench_site/sitecustomize.py`` when ``CAPTIONQ_BENCH_INSTANT_MODEL=1``; tests and the
conformance checks never see it.
"""

from __future__ import annotations

from typing import Any

ENV = "CAPTIONQ_BENCH_INSTANT_MODEL"
# Seconds each batch takes (a stand-in for the GPU's time: the fair-scheduling flood,
# bench/bench_fair_flood.py); unset or 0: instant.
SECONDS_ENV = "CAPTIONQ_BENCH_INSTANT_MODEL_SECONDS"


def install() -> None:
    import os
    import time

    from models import prompts
    from models.chat_types import ChatResult, Prepared
    from models.engine import Engine
    from models.text_stream import TextStream

    seconds = float(os.environ.get(SECONDS_ENV) or 0)

    def instant_group(self: Engine, group: list[Prepared]) -> list[ChatResult]:
        if seconds > 0:
            time.sleep(seconds)  # the batch's device time; the GIL is free meanwhile, as on a GPU
        out = []
        for p in group:
            req = p.request
            text = ""
            if req.on_token is not None:
                TextStream(self.tokenizer, self.template.stop_str, req.on_token).finish(text)
            out.append(ChatResult(
                text=text, prompt_tokens=p.prompt_tokens, output_tokens=1, finish_reason="stop",
                output_ids=[self.stop_id], history=prompts.next_history(req.history, p.question, text),
            ))
        return out

    setattr(Engine, "_run_group_unsafe", instant_group)  # noqa: B010


def instant_env(batch_seconds: float = 0.0) -> dict[str, Any]:
    return {ENV: "1", SECONDS_ENV: str(batch_seconds)}
