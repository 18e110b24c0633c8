#!/usr/bin/env bash
# GPU check (see scripts/gpu_check.py): generation and one SFT/DPO step on CUDA with a random-weight
# 7B-shaped model, figures in OUT_DIR/gpu_check.json. Usage: bash scripts/gpu_check.sh [OUT_DIR]
# Needs the project installed (make setup, or pip install -e . beside torch with CUDA). Stops itself
# before 10 minutes; the parts finished by then are already in the file.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu-check}}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: this check is for a GPU machine'"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/nvidia-smi.csv" 2>/dev/null || true
timeout --signal=TERM 570 "$PY" scripts/gpu_check.py --shape 7b --out "$OUT_DIR"
