#!/usr/bin/env bash
# One GPU check (kernel tests compiled on the GPU, the kernel benchmark beside its peers, one training
# step per config family) into one report folder, printed at the end; about 9 minutes on one
# H100/H200. --cpu-smoke: the same steps at tiny shapes on CPU. Options: python scripts/gpu_check.py -h
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
