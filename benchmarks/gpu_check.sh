#!/usr/bin/env bash
# The GPU check of docs/gpu.md: on a machine with an NVIDIA GPU and CuPy, in under 9 minutes, measure what the
# CPU cannot and write everything into one folder (one log per step, JSON from gpu_probe.py, summary.txt).
#
#   benchmarks/gpu_check.sh [OUT_DIR]          # default: gpu-check-<UTC time>
#
# PYTHON picks the interpreter (default python3).  Without an importable xpconv it installs the repository,
# from the wheels in benchmarks/wheels/ (no package index needed) when that folder exists, else from the index.
# CUPY must already be installed (xpconv[cuda12] or xpconv[cuda13]); torch is used where installed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
out=${1:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
py=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary="$out/summary.txt"
: >"$summary"

# step NAME SECONDS COMMAND...: run COMMAND under a time limit, its output in NAME.log, its status in summary.txt
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS status=0
    echo "== $name (at most ${limit} s)"
    (cd "$root" && timeout "$limit" "$@") >"$out/$name.log" 2>&1 || status=$?
    tail -n 3 "$out/$name.log"
    printf '%-24s exit %-3s %4d s\n' "$name" "$status" "$((SECONDS - start))" | tee -a "$summary"
}

if ! "$py" -c "import xpconv" 2>/dev/null; then
    if [ -d "$here/wheels" ]; then
        # pure-Python dependencies from wheels put beside this script (pip download, see docs/gpu.md)
        "$py" -m pip install --no-index --find-links "$here/wheels" --no-build-isolation "${root}[test]"
    else
        "$py" -m pip install "${root}[test]"
    fi
fi

probe=("$py" "$here/gpu_probe.py")
step info 30 "${probe[@]}" info --out "$out"
step syncs 60 "${probe[@]}" syncs --out "$out"
step timing 60 "${probe[@]}" timing --out "$out"
step accuracy-tf32-off 45 env CUPY_TF32=0 "${probe[@]}" accuracy --out "$out"
step accuracy-tf32-on 45 env CUPY_TF32=1 "${probe[@]}" accuracy --out "$out"
step gpu-tests 110 "$py" -m pytest -q -m gpu -p no:cacheprovider tests
step train-cupy 45 "$py" -m xpconv.cli train --backend cupy --epochs 1 --limit 2000 --metrics-out "$out/train-cupy.json"
if "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    step train-torch 45 "$py" -m xpconv.cli train --backend torch --device 0 --epochs 1 --limit 2000 \
        --metrics-out "$out/train-torch.json"
    backends=cupy,torch,torch-ref
else
    echo "torch with CUDA is not installed: no torch training, and the bench runs CuPy alone" | tee -a "$summary"
    backends=cupy
fi
step bench 60 "$py" -m xpconv.cli bench --backends "$backends" --torch-device cuda --repeats 5 --warmup 2 \
    --no-progress --json "$out/bench.json"
echo "total $SECONDS s; results in $out" | tee -a "$summary"
