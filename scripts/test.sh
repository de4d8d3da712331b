#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SELFENS_STRICT_PLUGINS=1 .venv/bin/python -m pytest "$@"
