"""bench/bench_gpu_engine.py at toy sizes on the CPU: the path a GPU session runs unattended
(checkpoint in the original layout, sharded when large, reused on a rerun; both modes; the
results file; the time limit's extrapolation) keeps working without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.bench_gpu_engine import main
from bench.checkpoint_writer import INTERNVL2_8B, checkpoint_bytes, plan_shards, weight_shapes
from models.checkpoint import open_checkpoint, parse_spec


def test_tiny_run_on_cpu_then_reused_with_a_time_limit(tmp_path: Path) -> None:
    ckpt, results = tmp_path / "ckpt", tmp_path / "RESULTS.md"
    common = ["--layout", "tiny", "--device", "cpu", "--new-tokens", "4", "--max-tiles", "2",
              "--workdir", str(ckpt), "--results", str(results)]
    first = main([*common, "--images", "4"])
    assert not first["reused"] and first["dtype"] == "float32"
    assert first["seq_images"] == first["compared"] == 4 and first["identical"] == 4  # fp32: asserted too
    assert first["ratio"] > 0 and not first["extrapolated"]

    second = main([*common, "--images", "3", "--time-limit", "0"])
    assert second["reused"] and second["write_s"] == 0.0
    assert second["extrapolated"] and second["seq_images"] == second["compared"] == 1
    rows = [ln for ln in results.read_text().splitlines() if ln.startswith("| 20")]
    assert len(rows) == 2 and "(partial: 1)" in rows[1] and "tiny, float32" in rows[0]


def test_8b_layout_matches_internvl2_8b(tmp_path: Path) -> None:
    """The 8B config as the converter reads it, without writing 16 GB of weights."""
    from bench.checkpoint_writer import write_config

    write_config(tmp_path, INTERNVL2_8B, 92553, torch.bfloat16)
    cfg = json.loads((tmp_path / "config.json").read_text())
    kit = json.loads((Path(__file__).parents[1] / "data" / "conformance" / "models" / "internvl2-internlm2"
                      / "config.json").read_text())
    assert cfg.keys() == kit.keys() and cfg["llm_config"].keys() == kit["llm_config"].keys()
    spec = parse_spec(cfg)
    assert (spec.num_image_token, spec.vision_layers_kept, spec.rope_type) == (256, 24, "dynamic")
    assert (spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim) == (32, 8, 128)
    assert spec.vision_kwargs["hidden_size"] == 1024 and spec.vision_kwargs["attention_bias"]
    assert spec.text_kwargs["intermediate_size"] == 14336 and spec.vocab_size == 92553
    shapes = weight_shapes(INTERNVL2_8B, 92553)
    params = sum(torch.Size(s).numel() for s, _, _ in shapes.values())
    assert 8.0e9 < params < 8.2e9  # InternVL2-8B: 8.08B
    assert shapes["mlp1.1.weight"][0] == (4096, 4096)
    assert shapes["language_model.model.layers.0.attention.wqkv.weight"][0] == (6144, 4096)
    size = checkpoint_bytes(INTERNVL2_8B, torch.bfloat16)
    shards = plan_shards(shapes, 2, 4_000_000_000)
    assert len(shards) == 5 and size == params * 2
    assert sum(len(s) for s in shards) == len(shapes)


def test_sharded_checkpoint_opens_with_its_index(tmp_path: Path) -> None:
    from bench.bench_gpu_engine import LAYOUTS
    from bench.checkpoint_writer import write_model

    write_model(tmp_path, LAYOUTS["tiny"], dtype=torch.bfloat16, shard_bytes=200_000)
    ckpt = open_checkpoint(tmp_path)
    assert len(ckpt.shards) > 1 and ckpt.shards[0].name.endswith(f"-of-{len(ckpt.shards):05d}.safetensors")
    assert set(ckpt.weight_map.values()) == {p.name for p in ckpt.shards}


@pytest.mark.gpu
def test_tiny_run_on_gpu(tmp_path: Path) -> None:
    """The CUDA-only parts (weights drawn on the GPU, bf16, peak memory, the GPU's name) at toy
    sizes, before gpu_session.sh spends minutes on the 8B layout."""
    s = main(["--layout", "tiny", "--images", "4", "--new-tokens", "4", "--workdir", str(tmp_path)])
    assert s["dtype"] in ("bfloat16", "float16") and s["compared"] == 4 and s["peak_bat_gib"] > 0
    assert s["device_name"] == torch.cuda.get_device_name()
