"""The thesis's SuperNet claims on Fashion-MNIST, at a CPU budget: trains the runs (or reuses finished ones) and prints
one table per claim.

    python benchmarks/supernet_claims.py mlp --seeds 0 1 2 --epochs 12   # claim 1 + 3: single MLP vs SuperModel
    python benchmarks/supernet_claims.py sweep --epochs 12                 # claim 2: from ~50k to ~3M parameters
    python benchmarks/supernet_claims.py snapshots --epochs 8              # claim 4: snapshots and FGE on a small CNN

Runs go to ``runs/supernet-claims/<name>`` and are skipped when their ``metrics.json`` exists, so an interrupted
invocation continues where it stopped (a half-finished run resumes from its checkpoint). The budget is set by
``--epochs``: the members' (or the network's) phase gets that many epochs; the later phases of the configs keep their
lengths (last layers retrained one depth at a time, then the merge layer alone). Accuracies are on the test split;
"mean" and "voting" are the SuperModel's trained members combined by averaging logits and by majority vote (evaluated
on the same weights as "merged"). Minutes are training time with each epoch timed at its phase's median epoch time
(this machine is shared: an epoch that ran beside another job is several times slower), evaluation excluded.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from time_to_accuracy import read_curve  # benchmarks/, beside this script

from selfens_core import engine
from selfens_core.config import load_config
from selfens_core.data import load_dataset
from selfens_core.evaluation import evaluate
from selfens_core.factory import build_component
from selfens_core.pretrained import load_pretrained

ROOT = Path("runs/supernet-claims")
SINGLE, SUPER = "configs/single-mlp-fmnist.yaml", "configs/supernet-mlp-fmnist.yaml"


def config(path: str, epochs: int, seed: int, **model_args: Any) -> DictConfig:
    """``path`` with its first phase cut to ``epochs``, seeded; ``model_args`` override the model's."""
    cfg = load_config(path, [f"train.seed={seed}"])
    cfg.phases[0].epochs = epochs
    cfg.model.args.update(model_args)
    return cfg


def train(name: str, cfg: DictConfig) -> Path:
    out = ROOT / name
    if not (out / "metrics.json").exists():
        print(f"--- training {name}")
        engine.train(cfg, out, resume=(out / "checkpoints").is_dir(), progress=False)
    return out


def test_acc(run: Path) -> dict[str, float]:
    """Test accuracy of the run's own combiner with all members, and of each member."""
    metrics = json.loads((run / "metrics.json").read_text())
    budgets = list(metrics["members"])
    return {"ensemble": metrics["members"][budgets[-1]]["acc"], "members": metrics["member_acc"],
            "params": metrics["params"]}


def with_combiner(run: Path, combiner: str) -> float:
    """Test accuracy of the run's model with all members, combined by ``combiner`` instead of its own."""
    model = load_pretrained(run)
    model.combiner = build_component("combiners", combiner)
    info, splits = load_dataset(model.pretrained_cfg["dataset"])
    metrics = evaluate(model, splits["test"], info, flops=False)
    return metrics["members"][str(model.num_members)]["acc"]


def minutes_to(run: Path, accuracy: float) -> float | None:
    """Training minutes (evaluation excluded, epochs timed at their phase's median: see time_to_accuracy.py) until
    the per-epoch test accuracy of all members first reaches ``accuracy``; None if it never did."""
    _, minutes, by_budget = read_curve(run)
    curve = by_budget[max(by_budget, key=int)]
    return next((m for m, a in zip(minutes, curve) if a >= accuracy), None)


def training_minutes(run: Path) -> float:
    """Training minutes of the whole run, epochs timed at their phase's median."""
    return read_curve(run)[1][-1]


def claim_mlp(seeds: list[int], epochs: int) -> None:
    rows = []
    for seed in seeds:
        single = train(f"single-e{epochs}-s{seed}", config(SINGLE, epochs, seed))
        merged = train(f"super-e{epochs}-s{seed}", config(SUPER, epochs, seed))
        rows.append({"seed": seed, "single": test_acc(single)["ensemble"], "merged": test_acc(merged)["ensemble"],
                     "mean": with_combiner(merged, "mean_logits"), "voting": with_combiner(merged, "voting"),
                     "best member": max(test_acc(merged)["members"]),
                     "single min to 90%": minutes_to(single, 0.90), "super min to 90%": minutes_to(merged, 0.90),
                     "single min": training_minutes(single), "super min": training_minutes(merged)})
    keys = [k for k in rows[0] if k != "seed"]
    print(f"\nClaim 1 and 3: single wide MLP (480-1120-1120-10, {test_acc(single)['params']:,} parameters) vs "
          f"SuperModel 6 × (200-466-466-10) ({test_acc(merged)['params']:,} parameters, merge layer included); "
          f"{epochs} epochs for the network / members, then the configs' later phases")
    print("| seed | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for row in rows:
        print(f"| {row['seed']} | " + " | ".join(_fmt(row[k]) for k in keys) + " |")
    means = {k: _mean([r[k] for r in rows]) for k in keys}
    print("| mean | " + " | ".join(_fmt(means[k]) for k in keys) + " |")


def claim_sweep(epochs: int, seed: int) -> None:
    """Single MLPs and 6-member SuperModels scaled together, from about 50k to about 3M parameters."""
    print(f"\nClaim 2: parameter sweep, {epochs} epochs, seed {seed}")
    print("| scale | single params | single acc | SuperModel params | merged | mean | voting |")
    print("|---|---|---|---|---|---|---|")
    for scale in (0.0625, 0.25, 0.5, 1.0, 1.25):
        single_hidden = [max(1, round(w * scale)) for w in (480, 1120, 1120)]
        super_hidden = [max(1, round(w * scale)) for w in (200, 466, 466)]
        single = train(f"sweep-single-x{scale}-e{epochs}-s{seed}",
                       config(SINGLE, epochs, seed, hidden=single_hidden))
        merged = train(f"sweep-super-x{scale}-e{epochs}-s{seed}", config(SUPER, epochs, seed, hidden=super_hidden))
        s, m = test_acc(single), test_acc(merged)
        print(f"| {scale} | {s['params']:,} | {s['ensemble']:.4f} | {m['params']:,} | {m['ensemble']:.4f} | "
              f"{with_combiner(merged, 'mean_logits'):.4f} | {with_combiner(merged, 'voting'):.4f} |")


def claim_snapshots(epochs: int, seed: int) -> None:
    """Snapshot ensembles (cosine restarts) and FGE on a quarter-width resnet10t, one training budget."""
    narrow = {"channels": [16, 32, 64, 128], "stem_width": 8}
    snap = load_config("configs/snapshots-resnet10t-fmnist.yaml", [f"train.seed={seed}"])
    snap.model.args.update(narrow)
    snap.phases[0].epochs = epochs
    snap.train.schedule_args.cycle_epochs = epochs / snap.model.args.num_members
    fge = load_config("configs/fge-resnet10t-fmnist.yaml", [f"train.seed={seed}"])
    fge.model.args.update(narrow)
    cycles = fge.phases[1].epochs  # keep the cyclic phase; the normal phase takes the rest of the budget
    fge.phases[0].epochs = epochs - cycles
    runs = {"snapshots (cosine restarts)": train(f"snapshots-e{epochs}-s{seed}", snap),
            "FGE": train(f"fge-e{epochs}-s{seed}", fge)}
    print(f"\nClaim 4: {epochs} training epochs of resnet10t at quarter width (small_images), seed {seed}")
    print("| run | final network | best snapshot | merged | mean | voting | minutes |")
    print("|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        acc = test_acc(run)
        print(f"| {name} | {acc['members'][-1]:.4f} | {max(acc['members']):.4f} | {acc['ensemble']:.4f} | "
              f"{with_combiner(run, 'mean_logits'):.4f} | {with_combiner(run, 'voting'):.4f} | "
              f"{training_minutes(run):.1f} |")


def _mean(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _fmt(value: Any) -> str:
    if value is None:
        return "never"
    return f"{value:.4f}" if value < 1 else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("claim", choices=("mlp", "sweep", "snapshots"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12, help="epochs of the members' (network's) phase")
    args = parser.parse_args()
    if args.claim == "mlp":
        claim_mlp(args.seeds, args.epochs)
    elif args.claim == "sweep":
        claim_sweep(args.epochs, args.seeds[0])
    else:
        claim_snapshots(args.epochs, args.seeds[0])


if __name__ == "__main__":
    main()
