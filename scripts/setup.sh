#!/usr/bin/env bash
# Install memnets and its test tools into the current Python environment.
# With no torch installed: on a machine without an NVIDIA GPU, take the CPU build of PyTorch
# (version MEMNETS_TORCH_VERSION, from TORCH_INDEX_URL when set, e.g. PyTorch's CPU wheel index),
# so pip does not pull several GB of CUDA packages; with a GPU, the default CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install "torch>=2.5"
  else
    "$PY" -m pip install "torch==${MEMNETS_TORCH_VERSION:-2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
fi
"$PY" -m pip install -q -e ".[dev]"
"$PY" -c "import torch, memnets; print(f'memnets {memnets.__version__} with torch {torch.__version__} ready')"
