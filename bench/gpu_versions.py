"""Print torch/CUDA/transformers versions for gpu_session.sh and warn when transformers is not
the version pyproject.toml pins: models/ converts onto transformers' InternVL internals, and with
5.17 (the device image's in 2026-11) batched outputs differ from one-at-a-time outputs even in
float32 on the CPU (tests/models/test_engine.py::test_batch_equals_one_at_a_time fails)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import transformers

pin = re.search(r'"transformers==([^"]+)"', (Path(__file__).parents[1] / "pyproject.toml").read_text())
pinned = pin.group(1) if pin else "?"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU available {torch.cuda.is_available()}"
      f"{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}; "
      f"transformers {transformers.__version__} (pinned {pinned}) from {Path(transformers.__file__).parent}")
if transformers.__version__ != pinned:
    print(f"WARNING: transformers {transformers.__version__} is not the pinned {pinned}: carry its wheel in "
          ".whl/ (BENCHMARKS.md, GPU section); this run's figures are not the project's")
