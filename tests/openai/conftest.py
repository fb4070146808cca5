"""A real captionq stack (PostgreSQL, Redis, S3, the API, one worker process on the tiny
InternLM2 checkpoint) shared by the facade's tests, and an ``openai`` client pointed at it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import services
from tests.worker.stack import Stack, build_stack, destroy_stack

KIT = Path(__file__).resolve().parents[1] / "data" / "conformance"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    files = services.create_bucket()  # uploaded batch files go to S3, as a multi-host API needs
    st = build_stack(tmp_path_factory.mktemp("openai"), openai_files_url=f"s3://{files.bucket}/openai-files/")
    try:
        st.start_worker(queues="gpu,io")
        yield st
    finally:
        destroy_stack(st)


@pytest.fixture(scope="session")
def client(stack: Stack) -> Any:
    import openai

    # No retries: a test must see the first answer (the client retries 409/5xx by default).
    return openai.OpenAI(base_url=f"{stack.server.base_url}/openai/v1", api_key=stack.api_key,
                         max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def golden() -> dict[str, Any]:
    data = json.loads((KIT / "goldens" / "internvl2-internlm2" / "numerics.json").read_text())
    return {e["id"]: e for e in data["chat_end_to_end"]}


@pytest.fixture(scope="session")
def image_url(stack: Stack) -> str:
    return stack.put_file(KIT / "images" / "img04_448x448.png")
