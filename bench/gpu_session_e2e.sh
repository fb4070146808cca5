#!/usr/bin/env bash
# The single command of a GPU machine's end-to-end stage: N photos (1920x1080, max 6 tiles, 128 new
# tokens) through the whole service (API + one real worker process in the embedded local mode:
# SQLite, kombu's filesystem broker, file:// media) against the model card's batch_chat recipe on
# the same inputs (static generate over chunks of 16), InternVL2-8B layout with random bf16
# weights; images/s of each and the ratio. Sized to end in about 4 minutes: the benchmark must end
# $DEADLINE s after it starts (the 8B checkpoint's writing, ~20 s, included; a warm machine that
# ran gpu_session.sh or gpu_session_worker.sh reuses theirs); each half stops early when it must,
# and its rate then comes from the images done (the output and the results row say so).
#
#   bash bench/gpu_session_e2e.sh               # device: logs and results file under $OUT
#   DRY_RUN=1 bash bench/gpu_session_e2e.sh     # any machine (a virtualenv active): tiny, CPU, 4 x 2 tokens
#
# Before the device call, here: `python bench/device_wheels.py` (the service packages the device
# image lacks and the pinned transformers, in .whl/worker-site.tar.xz); the call carries .whl.
# Every setting below can be overridden in the environment.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PY:-python3}
if [ "${DRY_RUN:-0}" = 1 ]; then
  LAYOUT=${LAYOUT:-tiny} DEVICE=${DEVICE:-cpu} IMAGES=${IMAGES:-4} NEW_TOKENS=${NEW_TOKENS:-2}
  DEADLINE=${DEADLINE:-150} RESULTS=${RESULTS:-$OUT/RESULTS_gpu_e2e.md}
  WORKDIR=${WORKDIR:-/tmp/captionq-bench-e2e-tiny}
  CARRIED=${CARRIED:-0}   # the tarball's binaries are for the device's Python 3.12
else
  LAYOUT=${LAYOUT:-8b} DEVICE=${DEVICE:-cuda} IMAGES=${IMAGES:-256} NEW_TOKENS=${NEW_TOKENS:-128}
  DEADLINE=${DEADLINE:-200} RESULTS=${RESULTS:-bench/RESULTS_gpu_e2e.md}
  WORKDIR=${WORKDIR:-/tmp/captionq-bench-$LAYOUT}  # the other GPU scripts' 16 GB checkpoint
  CARRIED=${CARRIED:-1}
fi
MAX_TILES=${MAX_TILES:-6} RECIPE_BATCH=${RECIPE_BATCH:-16}
SITE=${SITE:-/tmp/site} WHEELS=${WHEELS:-.whl}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "== $(date -u +%FT%TZ) gpu_session_e2e: $LAYOUT layout on $DEVICE, $IMAGES photos x $NEW_TOKENS tokens; logs in $OUT"

source bench/device_site.sh
if [ "$CARRIED" = 1 ]; then carry_site || exit 1; fi
record_versions

status=0
echo "== $(date -u +%T) bench_e2e_recipe.py --layout $LAYOUT (deadline ${DEADLINE}s)"
timeout $((DEADLINE + 30)) $PY bench/bench_e2e_recipe.py --layout "$LAYOUT" --device "$DEVICE" \
  --images "$IMAGES" --max-tiles "$MAX_TILES" --new-tokens "$NEW_TOKENS" --recipe-batch "$RECIPE_BATCH" \
  --deadline "$DEADLINE" --workdir "$WORKDIR" --results "$RESULTS" 2>&1 | tee "$OUT/bench_e2e_recipe.log" \
  || status=1
[ "$RESULTS" -ef "$OUT/$(basename "$RESULTS")" ] || cp "$RESULTS" "$OUT/" 2>/dev/null || true
echo "== $(date -u +%T) gpu_session_e2e done, status $status"
exit $status
