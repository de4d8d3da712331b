"""The IENet paper's Table 2 (channel selections) and Table 4 (combiners) on Fashion-MNIST at a short CPU budget.

Trains ``configs/ienet-mobilenetv2-fmnist.yaml`` with slimmable, random cut, random offset and shuffle channel
selection (4 sub-networks 0.9/0.9/0.9/1.0, stacking), and the full network alone (``widths=[1.0]``, the
stand-alone baseline); evaluates each run on the full test set with ``selfens eval``; prints

- Table 2: accuracy of each sub-network, similarity S (the fraction of test images on which all sub-networks predict
  the same class, K/N), ensemble accuracy (stacking) and Δ over the best sub-network;
- Table 4: stand-alone, voting, averaging and stacking accuracy of the RC model (one pass over the test set, the
  three combiners applied to the same member logits), and the parameters stacking adds.

    python benchmarks/ienet_tables.py --out runs/ienet-tables                      # 5,000 images, 3 epochs
    python benchmarks/ienet_tables.py --out runs/ienet-tables --subset 10000 --epochs 5 train.lr=0.05

Extra ``key=value`` arguments are config overrides for every run. A run directory that already holds a trained model
is reused, so an interrupted script continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from selfens_core.data import iterate_batches, load_dataset
from selfens_core.factory import build_component
from selfens_core.metrics import MetricAccumulator
from selfens_core.pretrained import load_pretrained

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ienet-mobilenetv2-fmnist.yaml"
VARIANTS = {
    "stand-alone": ["model.args.widths=[1.0]"],  # one sub-network, the full network: scored by its own accuracy
    "slimmable": ["model.args.selection=slimmable"],
    "random cut": ["model.args.selection=rc"],
    "random offset": ["model.args.selection=ro"],
    "shuffle channel": ["model.args.selection=sc"],
}
TABLE4_COMBINERS = {"voting": "voting", "averaging": "mean_probs", "stacking": None}  # None: the trained one


def selfens(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "selfens_core.cli", *args], check=True)


def train_and_eval(name: str, out: Path, budget: list[str], data_args: list[str]) -> dict:
    run = out / name.replace(" ", "-")
    if not (run / "model.safetensors").exists():
        selfens("train", str(CONFIG), "--out", str(run), "--quiet", "--resume", *budget, *VARIANTS[name])
    if not (run / "eval" / "metrics.json").exists():
        selfens("eval", str(run), "--out", str(run / "eval"), *data_args)
    return json.loads((run / "eval" / "metrics.json").read_text())


@torch.no_grad()
def combiner_accuracies(run: Path, data: str, root: str | None, subset: int | None) -> dict[str, float]:
    """Accuracy of all members combined by each Table-4 combiner, from one pass over the test set."""
    model = load_pretrained(run)
    info, splits = load_dataset(data, root=root, subset=subset)
    logits, targets = [], []
    for x, y in iterate_batches(splits["test"], info, batch_size=500, train=False, augment=False, seed=0, epoch=0):
        logits.append(model(x).float())
        targets.append(y)
    logits, targets = torch.cat(logits, 1), torch.cat(targets)
    n = model.num_members
    result = {}
    for label, name in TABLE4_COMBINERS.items():
        combiner = model.combiner if name is None else build_component("combiners", name)
        acc = MetricAccumulator(n, [n])
        acc.update(logits, targets, combiner)
        result[label] = acc.compute()["members"][str(n)]["acc"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the five runs")
    parser.add_argument("--subset", type=int, default=5000, help="training images (seeded subset of the 60,000)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--eval-subset", type=int, default=None,
                        help="evaluate on the seeded test subset that `selfens eval --subset N` uses (N // 5 images)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args()

    out = Path(args.out)
    budget = [f"data.name={args.data}", f"data.subset={args.subset}", f"train.epochs={args.epochs}", *args.overrides]
    if args.data_root:
        budget.append(f"data.root={args.data_root}")
    data_args = ["--data", args.data] + (["--data-root", args.data_root] if args.data_root else [])
    if args.eval_subset:
        data_args += ["--subset", str(args.eval_subset)]
    metrics = {name: train_and_eval(name, out, budget, data_args) for name in VARIANTS}

    model = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("model.name=")), "ienet-mobilenetv2")
    print(f"\nIENet on {args.data}: {model}, {args.subset} training images, {args.epochs} epochs "
          f"({' '.join(args.overrides) or 'config defaults'}); accuracy (%) on "
          + (f"a seeded {args.eval_subset // 5}-image test subset" if args.eval_subset else "the full test set"))
    print("\nTable 2 (4 sub-networks 0.9/0.9/0.9/1.0, stacking; S = fraction of test images where all agree, K/N)")
    print(f"{'operation':16}{'sub-net 1':>10}{'sub-net 2':>10}{'sub-net 3':>10}{'sub-net 4':>10}{'S':>8}"
          f"{'ensemble':>10}{'Δ':>8}")
    for name, m in metrics.items():
        if name == "stand-alone":
            continue
        members, ensemble = m["member_acc"], m["members"][str(len(m["member_acc"]))]["acc"]
        print(f"{name:16}" + "".join(f"{100 * a:10.2f}" for a in members)
              + f"{m['agreement']:8.3f}{100 * ensemble:10.2f}{100 * (ensemble - max(members)):+8.2f}")

    rc_run = out / "random-cut"
    table4 = combiner_accuracies(rc_run, args.data, args.data_root, args.eval_subset)
    alone = metrics["stand-alone"]["member_acc"][0]
    print("\nTable 4 (random cut model)")
    print(f"{'strategy':16}{'acc':>8}{'err':>8}")
    for label, acc in {"stand-alone": alone, **table4}.items():
        print(f"{label:16}{100 * acc:8.2f}{100 * (1 - acc):8.2f}")
    model = load_pretrained(rc_run)
    stacking = sum(p.numel() for p in model.combiner.parameters())
    extra = metrics["random cut"]["params"] - metrics["stand-alone"]["params"]
    print(f"\nstacking adds {stacking:,} parameters (N·C·C = {model.num_members}·{model.num_classes}·"
          f"{model.num_classes}); IENet has {extra:,} more parameters than the stand-alone run (one BatchNorm per "
          f"sub-network and the larger stacking map)")


if __name__ == "__main__":
    main()
