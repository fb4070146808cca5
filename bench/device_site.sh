# Sourced by the GPU session scripts: unpack what .whl/ carries (wheels, and the .tar.xz that
# bench/device_wheels.py writes) into $SITE and put it first on PYTHONPATH, then record the
# machine's GPU and versions in $OUT/versions.txt. Needs PY, SITE, WHEELS and OUT set.
carry_site() {
  mkdir -p "$SITE"
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl || return 1
  fi
  for t in "$WHEELS"/*.tar.xz; do
    [ -e "$t" ] || { echo "WARNING: no $WHEELS/*.tar.xz: run python bench/device_wheels.py here first"; break; }
    tar -xJf "$t" -C "$SITE" || return 1
  done
  export PYTHONPATH="$SITE:$PYTHONPATH"
}

record_versions() {
  { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>&1; $PY bench/gpu_versions.py 2>&1; } | tee "$OUT/versions.txt"
}
