#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint and run the whole test suite on CPU. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
"$PY" -m ruff check .
"$PY" -m pytest -q -p no:cacheprovider --durations=15 "$@"
