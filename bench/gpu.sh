#!/usr/bin/env bash
# One prepared GPU run (<= 8 minutes on one H100/H200), JSON into bench/results/gpu/:
#   1. training step: ti14, S/14 and B/14 at 224/98 px, bf16 autocast, SDPA flash
#      (bench/gpu_bench.py train), MFU against the card's dense bf16 peak by its name;
#   2. inference: B/14 image tower in bf16 (PyTorch), ONNX Runtime CUDA if installed;
#   3. the loader bench (bench/loader.py) on 16 cores;
#   4. a 2-process all-reduce check: NCCL, then gloo (with one GPU both ranks share it).
# Without a GPU (or with --cpu-smoke) it runs the same code on the CPU at tiny sizes in
# a minute or two and says clearly that the GPU part was skipped.
#
#   bash bench/gpu.sh [--cpu-smoke] [--out DIR]
#
# Where it runs. The device machines lent to this project (one H100 80GB or H200, 16 CPU
# cores, no internet) come with their own Python 3.12 whose torch is a CUDA build
# (2.11.0+cu130 when last read), together with numpy, pillow, pyarrow, pyyaml,
# sentencepiece, onnx, onnxruntime (CPU build: no CUDA provider) and psutil. The repo's
# .venv is built from the lock (Python 3.11, the CPU torch wheel) and cannot be rebuilt
# there (no package index). So the script picks its Python in this order:
#   $PYTHON if set; else `python3` if its torch sees a CUDA device; else .venv/bin/python
#   (running `make install` first only if .venv is missing); else python3.
# The repo is put on PYTHONPATH, so nothing needs installing: the benches import
# tipsv2_core and bench/ only (no MLflow, Ray or KFP).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=bench/results/gpu
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: bash bench/gpu.sh [--cpu-smoke] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done

has_cuda() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ "$SMOKE" = 0 ] && command -v python3 >/dev/null && has_cuda python3; then
  PY=python3
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif [ ! -e .venv ] && command -v make >/dev/null && make install >/dev/null 2>&1; then
  PY=.venv/bin/python
else
  PY=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
FLAG=()
if [ "$SMOKE" = 1 ] || ! has_cuda "$PY"; then
  SMOKE=1
  FLAG=(--cpu-smoke)
fi
mkdir -p "$OUT"
START=$(date +%s)
echo "python: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
if [ "$SMOKE" = 1 ]; then
  echo "GPU part SKIPPED: no CUDA device (or --cpu-smoke); running the CPU fallbacks at tiny sizes"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

status=0
run() {  # a failing part is reported and the others still run
  local name=$1; shift
  local t0=$(date +%s)
  echo "== $name"
  if "$@"; then echo "== $name: done in $(( $(date +%s) - t0 )) s"
  else echo "== $name: FAILED (exit $?)"; status=1; fi
}

run "training step" "$PY" bench/gpu_bench.py train --out "$OUT" "${FLAG[@]}"
run "inference" "$PY" bench/gpu_bench.py infer --out "$OUT" "${FLAG[@]}"
if [ "$SMOKE" = 1 ]; then
  run "loader" "$PY" bench/loader.py --cases 112/56 --items 8 --images 16 --cores 2 \
    --data "$OUT/tmp" --json "$OUT/loader.json"
else
  run "loader, 16 cores" "$PY" bench/loader.py --items 300 --cores 16 \
    --data "${TMPDIR:-/tmp}" --json "$OUT/loader.json"
fi
run "all-reduce, 2 processes" "$PY" bench/gpu_bench.py allreduce --out "$OUT" "${FLAG[@]}"
rm -rf "$OUT/tmp"

"$PY" - "$OUT" "$SMOKE" "$(( $(date +%s) - START ))" <<'PY'
import json, os, sys
out, smoke, seconds = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
summary = {"gpu_part": "skipped (no CUDA device or --cpu-smoke)" if smoke else "ran",
           "seconds": seconds, "load_average": os.getloadavg(),
           "files": sorted(f for f in os.listdir(out) if f.endswith(".json"))}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary))
PY
if [ "$SMOKE" = 1 ]; then echo "GPU part SKIPPED: only the CPU fallbacks ran"; fi
exit $status
