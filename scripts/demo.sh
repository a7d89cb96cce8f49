#!/usr/bin/env bash
# Set up and run the demo on the embedded digits data (no Debian data packages needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-data
.venv/bin/mentor demo "$@"
