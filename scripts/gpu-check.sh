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
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/selfens-site}
[ -d .whl ] && "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
"$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" .
export PYTHONPATH="$SITE" SELFENS_DATA="$PWD/.data" PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
"$PYTHON" -m pytest -q -rs -p no:cacheprovider -m cuda tests/test_distributed.py tests/test_phases.py
"$PYTHON" benchmarks/gpu_check.py "$@"
