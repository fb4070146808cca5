#!/usr/bin/env bash
# The single command of a GPU machine's engine run: the GPU-marked tests, then the batched
# vs one-at-a-time engine benchmark at full size (InternVL2-8B layout, random bf16 weights, 256
# images at max 6 tiles, 128 new tokens). Sized to end within one 10-minute device command:
# the tests get at most $TEST_TIMEOUT s, the benchmark must end by $BENCH_DEADLINE s after it
# starts (its one-at-a-time loop shrinks to fit; it stops at $TIME_LIMIT s in any case).
#
#   bash bench/gpu_session.sh     # logs and the results file under $OUT (the folder returned from the GPU machine)
#   LAYOUT=tiny IMAGES=4 NEW_TOKENS=4 RESULTS=/tmp/r.md bash bench/gpu_session.sh   # dry run, any machine
#
# The device machine has no package index and its own torch/transformers; wheels in .whl/ (the
# pinned transformers: see BENCHMARKS.md, GPU section) are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
TEST_TIMEOUT=${TEST_TIMEOUT:-120}
BENCH_DEADLINE=${BENCH_DEADLINE:-420}
TIME_LIMIT=${TIME_LIMIT:-150}
LAYOUT=${LAYOUT:-8b}
IMAGES=${IMAGES:-256}
NEW_TOKENS=${NEW_TOKENS:-128}
RESULTS=${RESULTS:-bench/RESULTS_gpu_engine.md}
# 16 GB for the 8B layout; a rerun on the same warm machine finds it there and skips the writing
WORKDIR=${WORKDIR:-/tmp/captionq-bench-$LAYOUT}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "== $(date -u +%FT%TZ) gpu_session: logs in $OUT"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
{ nvidia-smi -L 2>&1; python3 bench/gpu_versions.py 2>&1; } | tee "$OUT/versions.txt"

status=0
echo "== $(date -u +%T) pytest -m gpu (limit ${TEST_TIMEOUT}s)"
timeout "$TEST_TIMEOUT" python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests/models/test_engine_gpu.py \
  tests/models/test_bench_gpu_engine.py 2>&1 | tee "$OUT/pytest_gpu.log" || status=1

echo "== $(date -u +%T) bench_gpu_engine.py --layout $LAYOUT --images $IMAGES (deadline ${BENCH_DEADLINE}s)"
timeout $((BENCH_DEADLINE + 20)) python3 bench/bench_gpu_engine.py --layout "$LAYOUT" \
  --images "$IMAGES" --max-tiles 6 --new-tokens "$NEW_TOKENS" --time-limit "$TIME_LIMIT" \
  --deadline "$BENCH_DEADLINE" --workdir "$WORKDIR" --results "$RESULTS" \
  2>&1 | tee "$OUT/bench_gpu_engine.log" || status=1
cp "$RESULTS" "$OUT/" 2>/dev/null || true  # the tree's results file with this run's row added
echo "== $(date -u +%T) gpu_session done, status $status"
exit $status
