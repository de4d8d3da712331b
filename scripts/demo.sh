#!/usr/bin/env bash
# Set up, fetch Fashion-MNIST if needed, then show what a self-ensemble is for, in about five minutes on 2 CPU cores:
#  1. a pretrained HNE from the zoo (4 members, 93% test accuracy), evaluated at every member budget: accuracy
#     against inference cost, printed and plotted (budget.png);
#  2. a small HNE trained here for 2 epochs (configs/demo-fmnist.yaml), and its own table per member budget.
# Extra arguments are config overrides of the training, e.g. train.epochs=4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${SELFENS_DATA:-}" ] \
   && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "could not install dataset-fashion-mnist; selfens will try torchvision's download"
fi
out=runs/demo-$(date +%Y%m%d-%H%M%S)
echo "== 1/2: the zoo's hne-resnet10t.fmnist, evaluated at each member budget on the 10,000 test images"
.venv/bin/selfens eval hne-resnet10t.fmnist --out "$out/pretrained"
echo
echo "== 2/2: training a small HNE (4 members, quarter-width resnet10t) for 2 epochs: a few minutes on 2 cores"
.venv/bin/selfens train configs/demo-fmnist.yaml --out "$out/trained" "$@"
echo
echo "The accuracy/cost plot of the pretrained model: $out/pretrained/budget.png. Longer recipes: docs/results.md."
