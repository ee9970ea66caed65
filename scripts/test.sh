#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint and run the whole test suite on CPU. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
"$PY" -m ruff check .
# One pytest-xdist worker per core (MEMNETS_TEST_WORKERS=N to choose, 0 for one process): the tests are
# single-threaded (tests/conftest.py), so two cores run the suite in about half the time.
"$PY" -m pytest -q -p no:cacheprovider --durations=15 -p no:benchmark -n "${MEMNETS_TEST_WORKERS:-auto}" --dist worksteal "$@"
