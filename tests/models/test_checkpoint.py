"""Checkpoint reading and conversion: spec mapping, fused-tensor splits, shards, the converted
cache, typed errors for missing/corrupt/unknown checkpoints, device placement rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import open_checkpoint, parse_spec, split_internlm2_wqkv
from models.checkpoint.placement import resolve_attention, resolve_dtype, split_device_map
from models.engine import Engine
from models.errors import CheckpointCorrupt, CheckpointNotFound, UnknownTemplate, UnsupportedArchitecture
from models.generation import GenerationParams

INTERNLM2 = "internvl2-internlm2"
QWEN2 = "internvl2-qwen2"


def _copy(kit_dir: Path, variant: str, dest: Path, *, weights: bool = True) -> Path:
    """The kit checkpoint copied into ``dest`` (weights linked, not copied, unless rewritten)."""
    src = kit_dir / "models" / variant
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name == "model.safetensors":
            if weights:
                (dest / f.name).symlink_to(f)
        else:
            shutil.copy(f, dest / f.name)
    return dest


def _edit_config(folder: Path, **changes: object) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        parts = key.split("__")
        target = cfg
        for p in parts[:-1]:
            target = target[p]
        target[parts[-1]] = value
    (folder / "config.json").write_text(json.dumps(cfg))


def _params(engine: Engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.model.state_dict().items()}


def test_spec_from_kit_configs(kit_dir: Path) -> None:
    a = parse_spec(open_checkpoint(kit_dir / "models" / INTERNLM2).config)
    assert (a.llm_family, a.text_model_type, a.template) == ("internlm2", "llama", "internlm2-chat")
    assert a.rope_type == "dynamic" and a.text_kwargs["rope_parameters"]["factor"] == 2.0
    assert a.num_image_token == 256 and a.vision_layers_kept == 2 and a.max_position_embeddings == 1280
    b = parse_spec(open_checkpoint(kit_dir / "models" / QWEN2).config)
    assert (b.llm_family, b.rope_type, b.tie_word_embeddings) == ("qwen2", "default", False)
    cfg = b.internvl_config(1093)
    assert cfg.vision_config.use_mean_pooling and cfg.vision_feature_select_strategy == "default"
    assert cfg.image_token_id == 1093 and cfg.tie_word_embeddings is False


def test_internlm2_wqkv_is_ungrouped_per_kv_head() -> None:
    heads, kv, d, hidden = 6, 2, 3, 5
    g = heads // kv
    q = torch.randn(heads * d, hidden)
    k = torch.randn(kv * d, hidden)
    v = torch.randn(kv * d, hidden)
    blocks = []
    for h in range(kv):  # the original layout: [q_0..q_{g-1}, k, v] per kv head
        blocks += [q[(h * g + j) * d:(h * g + j + 1) * d] for j in range(g)]
        blocks += [k[h * d:(h + 1) * d], v[h * d:(h + 1) * d]]
    q2, k2, v2 = split_internlm2_wqkv(torch.cat(blocks), heads, kv, d)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)
    with pytest.raises(CheckpointCorrupt):
        split_internlm2_wqkv(torch.zeros(7, hidden), heads, kv, d)


@pytest.mark.parametrize("change,error", [
    ({"llm_config__architectures": ["MambaForCausalLM"]}, UnsupportedArchitecture),
    ({"ps_version": "v1"}, UnsupportedArchitecture),
    ({"vision_config__architectures": ["CLIPVisionModel"], "vision_config__model_type": "clip"},
     UnsupportedArchitecture),
    ({"llm_config__rope_scaling": {"type": "yarn", "factor": 4.0}}, UnsupportedArchitecture),
    ({"select_layer": -9}, UnsupportedArchitecture),
    ({"template": "vicuna_v1.1"}, UnknownTemplate),
])
def test_unknown_layouts_are_typed_errors(kit_dir: Path, tmp_path: Path, change: dict[str, object],
                                          error: type[Exception]) -> None:
    folder = _copy(kit_dir, INTERNLM2, tmp_path / "ckpt")
    _edit_config(folder, **change)
    with pytest.raises(error) as info:
        Engine.load(folder)
    assert str(info.value)


def test_not_an_internvl_config(kit_dir: Path, tmp_path: Path) -> None:
    folder = _copy(kit_dir, QWEN2, tmp_path / "ckpt")
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2"]}))
    with pytest.raises(UnsupportedArchitecture, match="vision_config"):
        Engine.load(folder)


def test_missing_things_are_not_found(kit_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFound):
        Engine.load(tmp_path / "nowhere")
    folder = _copy(kit_dir, QWEN2, tmp_path / "noweights", weights=False)
    with pytest.raises(CheckpointNotFound, match="safetensors"):
        Engine.load(folder)
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointNotFound, match="pickle"):
        Engine.load(folder)


def test_hub_id_not_in_cache_names_id_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFound) as info:
        Engine.load("OpenGVLab/InternVL2-1B", hub_cache_dir=tmp_path / "hub")
    assert "OpenGVLab/InternVL2-1B" in str(info.value) and str(tmp_path / "hub") in str(info.value)


def test_hub_id_resolved_from_cache(kit_dir: Path, tmp_path: Path) -> None:
    """A hub id is found in huggingface_hub's cache layout (snapshots/<rev>, refs/main)."""
    repo = tmp_path / "hub" / "models--tiny--internvl2-qwen2"
    _copy(kit_dir, QWEN2, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    engine = Engine.load("tiny/internvl2-qwen2", hub_cache_dir=tmp_path / "hub")
    assert engine.info.name == "tiny/internvl2-qwen2"


def test_corrupt_and_truncated_shards(kit_dir: Path, tmp_path: Path) -> None:
    folder = _copy(kit_dir, QWEN2, tmp_path / "bad", weights=False)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointCorrupt):
        Engine.load(folder)
    data = (kit_dir / "models" / QWEN2 / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointCorrupt):
        Engine.load(folder)


def test_missing_tensor_is_corrupt(kit_dir: Path, tmp_path: Path) -> None:
    folder = _copy(kit_dir, QWEN2, tmp_path / "partial", weights=False)
    tensors = load_file(str(kit_dir / "models" / QWEN2 / "model.safetensors"))
    del tensors["language_model.model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointCorrupt, match="up_proj"):
        Engine.load(folder)


def _shard(kit_dir: Path, variant: str, folder: Path) -> dict[str, torch.Tensor]:
    """Rewrite the checkpoint as two shards + model.safetensors.index.json."""
    tensors = load_file(str(kit_dir / "models" / variant / "model.safetensors"))
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for fname, keys in parts.items():
        save_file({k: tensors[k] for k in keys}, str(folder / fname))
        weight_map.update(dict.fromkeys(keys, fname))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return tensors


def test_sharded_checkpoint_and_converted_cache(kit_dir: Path, tmp_path: Path) -> None:
    reference = _params(Engine.load(kit_dir / "models" / INTERNLM2))
    folder = _copy(kit_dir, INTERNLM2, tmp_path / "sharded", weights=False)
    _shard(kit_dir, INTERNLM2, folder)
    cache = tmp_path / "converted"
    first = Engine.load(folder, cache_dir=cache)
    assert first.load_stats is not None and not first.load_stats.from_cache
    second = Engine.load(folder, cache_dir=cache)
    assert second.load_stats is not None and second.load_stats.from_cache
    for engine in (first, second):
        got = _params(engine)
        assert got.keys() == reference.keys()
        assert all(torch.equal(got[k], reference[k]) for k in reference)
    # a changed shard is a different cache entry
    shard = folder / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes())
    third = Engine.load(folder, cache_dir=cache)
    assert third.load_stats is not None and not third.load_stats.from_cache
    # a shard listed in the index but absent
    shard.unlink()
    with pytest.raises(CheckpointCorrupt, match="missing"):
        Engine.load(folder)


def test_model_card_split_rule() -> None:
    # InternVL2-26B-like: 48 layers on 2 GPUs -> ceil(48/1.5)=32 per GPU, GPU 0 takes half (16)
    m = split_device_map(48, 2)
    assert [m[f"model.language_model.layers.{i}"] for i in (0, 15, 16, 46)] == [0, 0, 1, 1]
    assert m["model.language_model.layers.47"] == 0  # last layer next to norm and head
    for name in ("model.vision_tower", "model.multi_modal_projector", "model.language_model.embed_tokens",
                 "model.language_model.norm", "lm_head"):
        assert m[name] == 0
    assert all(v == 0 for v in split_device_map(24, 1).values())


def test_runtime_choices_on_cpu() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_attention("auto", "cpu", torch.float32) == "sdpa"


def test_bf16_on_cpu_runs(kit_dir: Path) -> None:
    engine = Engine.load(kit_dir / "models" / QWEN2, dtype="bfloat16", attn_implementation="eager")
    assert engine.info.dtype == "bfloat16"
    res = engine.chat("Hello, who are you?", params=GenerationParams(max_new_tokens=6))
    assert res.output_tokens == 6
