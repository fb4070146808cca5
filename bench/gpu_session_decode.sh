#!/usr/bin/env bash
# The single command of a GPU machine's decoding run: the GPU-marked tests of the slot path
# (CUDA graph replay, continuous batching), then bench/bench_gpu_decode.py on the InternVL2-8B
# layout with random bf16 weights: ms per decoding step at 1/16/32/64 rows (static path, slot
# step eager, slot step as a CUDA graph) against the bandwidth floor, then 256 six-tile images
# through the static and the continuous batcher. Sized for one device command of < 8 minutes.
#
#   bash bench/gpu_session_decode.sh          # device: logs and results under $OUT
#   DRY_RUN=1 bash bench/gpu_session_decode.sh   # any machine, tiny layout on the CPU
#
# The device has no package index: .whl/ carries transformers (the pinned version) and
# llguidance, as wheels or as a .tar.xz of their unpacked files (smaller: the working tree and
# what it carries travel within 64 MiB) (BENCHMARKS.md, "Running the GPU benchmarks").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${DRY_RUN:-0}" = 1 ]; then
  args=(--layout tiny --device cpu --rows 1,4 --context 100 --steps 5 --images 6 --max-tiles 2
        --new-tokens 8 --slots 4 --workdir /tmp/captionq-bench-tiny --deadline 300)
else
  args=(--layout 8b --device cuda --deadline "${BENCH_DEADLINE:-300}" --workdir /tmp/captionq-bench-8b)
  CARRIED=1
fi
SITE=${SITE:-/tmp/site} WHEELS=${WHEELS:-.whl}
source bench/device_site.sh
if [ "${CARRIED:-0}" = 1 ]; then carry_site || exit 1; fi
echo "== $(date -u +%FT%TZ) gpu_session_decode: logs in $OUT"
record_versions
status=0
if [ "${DRY_RUN:-0}" != 1 ]; then
  echo "== $(date -u +%T) pytest -m gpu"
  timeout "${TEST_TIMEOUT:-90}" $PY -m pytest -m gpu -q -p no:cacheprovider -rs \
    tests/models/test_continuous_gpu.py 2>&1 | tee "$OUT/pytest_gpu.log" || status=1
fi
echo "== $(date -u +%T) bench_gpu_decode.py ${args[*]}"
timeout 400 $PY bench/bench_gpu_decode.py "${args[@]}" --results "$OUT/RESULTS_gpu_decode.md" 2>&1 \
  | tee "$OUT/bench_gpu_decode.log" || status=1
echo "== $(date -u +%T) gpu_session_decode done, status $status"
exit $status
