"""Training images/s of one process against two (``selfens train --nproc 2``, gloo) for two recipes, measured side
by side in one run (issue 15). Each run trains one epoch on a seeded subset of Fashion-MNIST with the recipe's global
batch; the two-process run's rank 0 times its steps, gradient all-reduces included.

    python benchmarks/scale_out.py [--images 7680] [--recipes resnet10t-fmnist demo-fmnist]

On a 2-core machine one process already uses both cores (intra-op threads), and two processes get one core each
(torchrun sets OMP_NUM_THREADS=1), so the ratio says what the all-reduce and the smaller per-process batch cost, not a
speed-up: more processes pay off with more cores, machines or GPUs than one process can use.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def images_per_s(recipe: str, nproc: int, images: int, out: Path) -> float:
    command = [sys.executable, "-m", "selfens_core.cli", "train", f"configs/{recipe}.yaml", "--out", str(out),
               "--quiet", f"--nproc={nproc}", f"data.subset={images}", "train.epochs=1", "train.precise_bn=0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{recipe} with {nproc} process(es) failed:\n{done.stderr[-2000:]}")
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=7680, help="training images per run (default 7680)")
    parser.add_argument("--recipes", nargs="+", default=["resnet10t-fmnist", "demo-fmnist"])
    args = parser.parse_args()
    print(f"{'recipe':24} {'1 process img/s':>16} {'2 processes img/s':>18} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes:
            one, two = (images_per_s(recipe, n, args.images, Path(tmp) / f"{recipe}-{n}") for n in (1, 2))
            print(f"{recipe:24} {one:16.1f} {two:18.1f} {two / one:6.2f}", flush=True)


if __name__ == "__main__":
    main()
