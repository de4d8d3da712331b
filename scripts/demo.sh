#!/usr/bin/env bash
# Set up, fetch Fashion-MNIST if needed, train HNE_small (16 members) on it with a short CPU budget and print the
# accuracy per member budget. Extra arguments are config overrides, e.g. train.epochs=10 data.subset=null.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${SELFENS_DATA:-}" ] \
   && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "could not install dataset-fashion-mnist; selfens will try torchvision's download"
fi
out=runs/demo-$(date +%Y%m%d-%H%M%S)
.venv/bin/selfens train configs/hne-resnet-small-fmnist.yaml --out "$out" \
  data.subset=6000 train.epochs=3 train.warmup_epochs=0.3 train.channels_last=true "$@"
