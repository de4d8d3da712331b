"""Train every built-in recipe for a few hundred steps on one device and print images/s and accuracy: the check
``scripts/gpu-check.sh`` runs whenever a GPU is lent (issue 15), and a smoke test of every recipe elsewhere.

    python benchmarks/gpu_check.py                          # CUDA, bf16, 200 steps of each recipe
    python benchmarks/gpu_check.py --device cpu --steps 5   # the same on the CPU, as a quick smoke test

Each recipe (``configs/*.yaml``) trains through ``selfens train`` on a seeded subset of its dataset
sized to ``--steps`` steps of its batch, every phase cut to one epoch, into ``runs/gpu-check/<recipe>/``. The table
gives the recipe's training images/s (median over its epochs), its precision, and the test accuracy of all members
(a check that it learns, not a result: a few hundred steps). One recipe runs at each other precision too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
COMPARE_PRECISIONS = "demo-fmnist"  # the recipe also run at fp32 and fp16 (CUDA)


def _overrides(config: Path, steps: int, device: str, precision: str) -> list[str]:
    cfg = OmegaConf.load(config)
    batch = int(OmegaConf.select(cfg, "train.batch_size", default=128))
    phases = len(OmegaConf.select(cfg, "phases", default=[]) or [])
    return [f"data.subset={steps * batch}", "data.val_split=0", "train.epochs=1", f"train.device={device}",
            f"train.precision={precision}", *(f"phases.{i}.epochs=1" for i in range(phases))]


def _check(config: Path, out: Path, overrides: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "selfens_core.cli", "train", str(config), "--out", str(out),
                           "--overwrite", "--quiet", *overrides], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1], "seconds": seconds}
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    last = list(metrics["members"])[-1]
    return {"images_per_s": statistics.median(e["images_per_s"] for e in epochs),
            "acc": metrics["members"][last]["acc"], "members": last, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=200, help="training steps per phase (default 200)")
    parser.add_argument("--precision", default=None, help="default: bf16 on CUDA, fp32 elsewhere")
    parser.add_argument("--only", nargs="*", default=None, help="recipe names (config file stems)")
    parser.add_argument("--out", default="runs/gpu-check")
    args = parser.parse_args()
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    configs = sorted(ROOT.glob("configs/*.yaml"))  # the paper's need CIFAR-100, which a machine offline lacks
    if args.only:
        configs = [c for c in configs if c.stem in args.only]
    runs = [(c, precision) for c in configs]
    if args.device == "cuda":
        runs += [(c, p) for c in configs if c.stem == COMPARE_PRECISIONS for p in ("fp32", "fp16") if p != precision]
    print(f"{'recipe':40} {'precision':9} {'img/s':>8} {'acc':>7} {'members':>7} {'wall s':>7}")
    failed = 0
    for config, prec in runs:
        result = _check(config, ROOT / args.out / f"{config.stem}-{prec}",
                        _overrides(config, args.steps, args.device, prec))
        if "error" in result:
            failed += 1
            print(f"{config.stem:40} {prec:9} FAILED after {result['seconds']:.0f} s: {result['error']}", flush=True)
        else:
            print(f"{config.stem:40} {prec:9} {result['images_per_s']:8.0f} {result['acc']:7.4f} "
                  f"{result['members']:>7} {result['seconds']:7.0f}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
