"""CUDA paths (skipped without a GPU): auto dtype, fp32 exactness on the GPU, flash attention,
bitsandbytes quantization, the multi-GPU split."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from models.conformance.numerics_checks import run_numerics_checks
from models.engine import ChatRequest, Engine
from models.generation import GenerationParams

pytestmark = pytest.mark.gpu
QWEN2 = "internvl2-qwen2"


def _reqs() -> list[ChatRequest]:
    pixels = torch.randn(3, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    return [ChatRequest("Describe this picture.", pixel_values=pixels,
                        params=GenerationParams(max_new_tokens=8)),
            ChatRequest("Hello, who are you?", params=GenerationParams(max_new_tokens=5))]


def test_auto_dtype_is_16_bit_on_gpu(kit_dir: Path) -> None:
    engine = Engine.load(kit_dir / "models" / QWEN2)
    assert engine.info.device.startswith("cuda")
    assert engine.info.dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    results = engine.generate_batch(_reqs())
    assert [r.output_tokens for r in results] == [8, 5]


def test_fp32_on_gpu_meets_the_kit_tolerances(kit_dir: Path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lines: list[tuple[str, bool, str]] = []
    run_numerics_checks(kit_dir, QWEN2, lambda n, ok, d: lines.append((n, ok, d)), device="cuda")
    assert all(ok for _, ok, _ in lines), [x for x in lines if not x[1]]


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash_attn not installed")
def test_flash_attention(kit_dir: Path) -> None:
    engine = Engine.load(kit_dir / "models" / QWEN2, dtype="bfloat16")
    assert engine.info.attn_implementation == "flash_attention_2"
    assert [r.output_tokens for r in engine.generate_batch(_reqs())] == [8, 5]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantized(kit_dir: Path, mode: str) -> None:
    engine = Engine.load(kit_dir / "models" / QWEN2, quantization=mode, dtype="float16")
    assert engine.info.quantization == mode
    assert [r.output_tokens for r in engine.generate_batch(_reqs())] == [8, 5]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_split_over_gpus(kit_dir: Path) -> None:
    engine = Engine.load(kit_dir / "models" / QWEN2, device="split")
    assert engine.info.device == "split"
    assert [r.output_tokens for r in engine.generate_batch(_reqs())] == [8, 5]
