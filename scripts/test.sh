#!/usr/bin/env bash
# Set up (venv, torch, data) and run the test suite. This is what CI runs.
# Two pytest workers (pytest-xdist), one test file per worker at a time (--dist loadfile: a file's
# module fixtures, such as its llama.cpp server, start once). MENTOR_TEST_WORKERS=0 runs serially.
# --durations: the 20 slowest tests end the output, to keep the default run within its ~15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORKERS=${MENTOR_TEST_WORKERS:-2}
if [ "$WORKERS" = 0 ]; then
  .venv/bin/python -m pytest -q --durations=20 "$@"
else
  .venv/bin/python -m pytest -q --durations=20 -n "$WORKERS" --dist loadfile "$@"
fi
