#!/usr/bin/env bash
# The whole test suite, from a fresh clone: venv, install, services, lint, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$py" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: on CPU hosts this is the local CPU wheel, not a CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
# Stop on exit whatever services.sh started for this run (services already running stay).
trap 'bash scripts/services.sh stop' EXIT
bash scripts/services.sh
ruff check .
mypy
python -m pytest -q -p no:cacheprovider "$@"
