"""Checkpoint reading and conversion onto transformers' InternVL classes (see the modules)."""

from models.checkpoint.convert import CONVERTER_VERSION, WeightConverter, split_internlm2_wqkv
from models.checkpoint.loader import LoadStats, empty_model, load_weights
from models.checkpoint.source import Checkpoint, open_checkpoint, resolve_folder
from models.checkpoint.spec import ModelSpec, parse_spec

__all__ = [
    "CONVERTER_VERSION",
    "Checkpoint",
    "LoadStats",
    "ModelSpec",
    "WeightConverter",
    "empty_model",
    "load_weights",
    "open_checkpoint",
    "parse_spec",
    "resolve_folder",
    "split_internlm2_wqkv",
]
