#!/usr/bin/env bash
# Create ./.venv and install selfens (editable) with its test dependencies. Idempotent.
# TORCH_SPEC overrides the torch/torchvision pair (default: the pair whose wheels the dev machines keep on disk).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  case "$(uname -m)" in
    aarch64) default_spec="torch==2.9.1 torchvision==0.24.1" ;;
    *)       default_spec="torch==2.14.1 torchvision==0.29.1" ;;
  esac
  echo "installing ${TORCH_SPEC:-$default_spec} ..."
  $PIP install -q ${TORCH_SPEC:-$default_spec}
fi
$PIP install -q -e ".[test]"
echo "selfens installed in $(pwd)/.venv"
