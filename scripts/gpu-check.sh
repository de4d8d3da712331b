#!/usr/bin/env bash
# The GPU check of issue 15: on a machine with CUDA, run the tests marked `cuda`, then train every built-in recipe for
# a few hundred steps (benchmarks/gpu_check.py) and print images/s. Made for the `device` tool's H200, whose image has
# torch, timm, pluggy, safetensors and huggingface_hub but not omegaconf, and cannot download.
#
#   bash scripts/gpu-check.sh --prepare   # here, once: omegaconf's wheel into .whl/, Fashion-MNIST into .data/
#   bash scripts/gpu-check.sh [ARGS]      # there (carry .whl and .data): ARGS go to benchmarks/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --prepare ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: -d .whl omegaconf==2.4.0
  mkdir -p .data/fashion-mnist
  cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .data/fashion-mnist/
  du -sh .whl .data
  exit 0
fi
source scripts/gpu-env.sh
"$PYTHON" -m pytest -q -rs -p no:cacheprovider -m cuda tests/test_distributed.py tests/test_phases.py
"$PYTHON" benchmarks/gpu_check.py "$@"
