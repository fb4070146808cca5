#!/usr/bin/env bash
# The single command of a GPU machine's worker run: 200 caption jobs through the whole service
# (API + one real worker process, in the embedded local mode: SQLite, kombu's filesystem broker,
# file:// media — the device machine has no PostgreSQL, Redis or S3), the batching worker against
# the same worker with batching off, on the InternVL2-8B layout with random bf16 weights, 128 new
# tokens. First a tiny pre-flight of the same path on the GPU (about 30 s; stops the run early
# if the path is broken there). Sized to end within one 10-minute device command: the benchmark
# must end $DEADLINE s after it starts; its batching-off half stops at $TIME_LIMIT s or earlier and
# its rate then comes from the jobs done (the output and the results row say so).
#
#   bash bench/gpu_session_worker.sh               # device: logs and results file under $OUT
#   DRY_RUN=1 bash bench/gpu_session_worker.sh     # any machine (a virtualenv active): tiny, CPU
#
# Before the device call, here: `python bench/device_wheels.py` writes .whl/worker-site.tar.xz (the
# service packages the device image lacks and the pinned transformers, for its Python 3.12); the
# call carries .whl. See BENCHMARKS.md, GPU section. Every setting below can be overridden.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PY:-python3}
if [ "${DRY_RUN:-0}" = 1 ]; then
  LAYOUT=${LAYOUT:-tiny} DEVICE=${DEVICE:-cpu} JOBS=${JOBS:-4} NEW_TOKENS=${NEW_TOKENS:-2}
  TIME_LIMIT=${TIME_LIMIT:-0} DEADLINE=${DEADLINE:-120} PREFLIGHT=${PREFLIGHT:-0}
  RESULTS=${RESULTS:-$OUT/RESULTS_gpu_worker.md} WORKDIR=${WORKDIR:-/tmp/captionq-bench-worker-tiny}
  CARRIED=${CARRIED:-0}   # the tarball's binaries are for the device's Python 3.12
else
  LAYOUT=${LAYOUT:-8b} DEVICE=${DEVICE:-cuda} JOBS=${JOBS:-200} NEW_TOKENS=${NEW_TOKENS:-128}
  TIME_LIMIT=${TIME_LIMIT:-150} DEADLINE=${DEADLINE:-450} PREFLIGHT=${PREFLIGHT:-1}
  RESULTS=${RESULTS:-bench/RESULTS_gpu_worker.md}
  # 16 GB; bench_gpu_engine.py's folder: a run of either on the same warm machine reuses it
  WORKDIR=${WORKDIR:-/tmp/captionq-bench-$LAYOUT}
  CARRIED=${CARRIED:-1}
fi
SITE=${SITE:-/tmp/site} WHEELS=${WHEELS:-.whl}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "== $(date -u +%FT%TZ) gpu_session_worker: $LAYOUT layout on $DEVICE, $JOBS jobs x $NEW_TOKENS tokens; logs in $OUT"

source bench/device_site.sh
if [ "$CARRIED" = 1 ]; then carry_site || exit 1; fi
record_versions
echo "== $(date -u +%T) imports of the worker path"
timeout 120 $PY -c "import api.app, worker.app, worker.tasks, cli.main, tests.worker.stack" \
  || { echo "the worker path does not import here: see above (a package missing from .whl?)"; exit 1; }

common=(--local --device "$DEVICE" --concurrency 32)
if [ "$PREFLIGHT" = 1 ]; then
  echo "== $(date -u +%T) pre-flight: tiny layout, 4 jobs x 2 tokens"
  timeout 180 $PY bench/bench_worker_batching.py "${common[@]}" --layout tiny --jobs 4 --new-tokens 2 \
    --time-limit 0 --workdir /tmp/captionq-bench-worker-tiny 2>&1 | tee "$OUT/preflight.log" \
    || { echo "pre-flight failed: not starting the $LAYOUT run"; exit 1; }
fi

status=0
echo "== $(date -u +%T) bench_worker_batching.py --layout $LAYOUT (time limit ${TIME_LIMIT}s, deadline ${DEADLINE}s)"
timeout $((DEADLINE + 30)) $PY bench/bench_worker_batching.py "${common[@]}" --layout "$LAYOUT" \
  --jobs "$JOBS" --new-tokens "$NEW_TOKENS" --time-limit "$TIME_LIMIT" --deadline "$DEADLINE" \
  --workdir "$WORKDIR" --results "$RESULTS" 2>&1 | tee "$OUT/bench_worker_batching.log" || status=1
[ "$RESULTS" -ef "$OUT/$(basename "$RESULTS")" ] || cp "$RESULTS" "$OUT/" 2>/dev/null || true
echo "== $(date -u +%T) gpu_session_worker done, status $status"
exit $status
