#!/usr/bin/env bash
# Retrain every zoo entry at its full budget on the `device` tool's GPU (issue 14) and leave them packed in $OUT.
#
#   bash scripts/gpu-check.sh --prepare                       # here, once: .whl/ and .data/ (gitignored)
#   run(command="bash scripts/gpu-zoo.sh", carry=[".whl", ".data"], timeout_s=600)   # there, with the device tool
#   python scripts/zoo_retrain.py --unpack FILES_AT            # here: verify the entries and put them into zoo/
#
# Then re-evaluate every entry offline (HF_HUB_OFFLINE=1 selfens eval NAME --out eval/NAME) and commit. ARGS go to
# scripts/zoo_retrain.py (e.g. --only hne-mobilenetv2.fmnist).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-env.sh
"$PYTHON" scripts/zoo_retrain.py --device cuda --pack "${OUT:-runs/zoo-retrain/packed}" "$@" 2>&1 | tee "${OUT:-/tmp}/zoo-retrain.log"
