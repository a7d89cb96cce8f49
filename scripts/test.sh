#!/usr/bin/env bash
# Set up (venv, torch, data) and run the test suite. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
