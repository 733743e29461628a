#!/usr/bin/env bash
# The GPU check: the one command the bare GPU machine runs, from the repository root, with .gpu-bundle
# carried beside the repository (made here by benchmarks/gpu_bundle.sh; the machine has no network).
#
#   bash benchmarks/gpu_check.sh                        # writes benchmarks/GPU.md and GPU.json
#   bash benchmarks/gpu_check.sh --smoke --out /tmp/x   # the same, tiny, on a CPU
#
# It installs the bundle's wheels into a folder of their own (nothing of the machine's Python is
# changed), puts them first on PYTHONPATH with panosync's src/, benchmarks/ and tests/, points
# panosync at the bundle's LPIPS weights, and runs benchmarks/gpu_check.py under a hard time limit
# (the script's own deadline comes first; this one only stops a run that hangs). With $OUT set (the
# device machine's folder that comes back), GPU.md, GPU.json and the log are copied there.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

PYTHON=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
LIMIT=${GPU_CHECK_TIMEOUT:-530}  # seconds; the script's own deadline is 480 s after it starts

if ! ls .gpu-bundle/*.whl > /dev/null 2>&1; then
    echo "no .gpu-bundle/*.whl: run 'make gpu-bundle' where PyPI is reachable, and carry .gpu-bundle" >&2
    exit 2
fi
rm -rf "$SITE"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1  # the machine runs as root, offline
if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .gpu-bundle/*.whl; then
    # No pip: a pure-Python wheel is a zip of importable folders and its metadata.
    echo "pip install failed: unpacking the wheels into $SITE instead" >&2
    mkdir -p "$SITE"
    for wheel in .gpu-bundle/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$SITE" || exit 2; done
fi
echo "bundle installed in $(( $(date +%s) - started )) s" >&2

export PYTHONPATH="$SITE:$PWD/src:$PWD/benchmarks:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
export PANOSYNC_LPIPS_WEIGHTS="$PWD/.gpu-bundle/lpips" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

smoke=false
for argument in "$@"; do [ "$argument" = "--smoke" ] && smoke=true; done
log=$(mktemp)
timeout -k 10 "$LIMIT" "$PYTHON" benchmarks/gpu_check.py "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
[ "$status" = 124 ] && echo "gpu_check.py stopped after $LIMIT s: the results written so far stand" >&2

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$log" "$OUT/gpu_check.log"
    if [ "$smoke" = false ]; then cp benchmarks/GPU.md benchmarks/GPU.json "$OUT"/ 2>/dev/null; fi
fi
rm -f "$log"
echo "gpu_check.sh: $(( $(date +%s) - started )) s in all, exit status $status" >&2
exit "$status"
