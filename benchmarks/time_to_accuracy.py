"""Test accuracy against training wall time, one curve per run, from the runs' own ``metrics.jsonl``.

Each epoch record holds its training seconds and the accuracy per member budget measured after it (on the
validation split, or on the test split when none was held out: the record names which). The curve of a
self-ensemble is its full ensemble (largest budget); ``--budgets`` adds its other budgets as dashed lines. Wall
time counts training only (the per-epoch evaluation is excluded), so runs of one machine are comparable when they
ran alone on it: a run slowed by another process shows it in its ``images_per_s``.

    python benchmarks/time_to_accuracy.py runs/resnet10t-fmnist runs/hne-resnet10t-fmnist --out time-to-accuracy.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_curve(run: Path) -> tuple[str, list[float], dict[str, list[float]]]:
    """(split name, cumulative training minutes, accuracy per budget) from ``run/metrics.jsonl``."""
    log = run / "metrics.jsonl"
    if not log.is_file():
        raise SystemExit(f"{run} has no metrics.jsonl: is it a `selfens train` run directory?")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not records:
        raise SystemExit(f"{log} holds no finished epoch yet")
    split = "val" if "val_acc" in records[0] else "test"
    minutes, total = [], 0.0
    for record in records:
        total += record["seconds"] / 60
        minutes.append(total)
    budgets = records[0][f"{split}_acc"].keys()
    return split, minutes, {b: [r[f"{split}_acc"][b] for r in records] for b in budgets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", required=True, help="the plot (.png)")
    parser.add_argument("--budgets", action="store_true", help="also plot every smaller member budget")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    splits = set()
    for run in args.runs:
        split, minutes, accuracy = read_curve(run)
        splits.add(split)
        budgets = sorted(accuracy, key=int)
        line, = ax.plot(minutes, accuracy[budgets[-1]], marker="o", label=f"{run.name} ({budgets[-1]} members)")
        print(f"{run.name}: {minutes[-1]:.1f} min, {split} accuracy {accuracy[budgets[-1]][-1]:.4f} "
              f"({len(minutes)} epochs, {budgets[-1]} members)")
        for budget in budgets[:-1] if args.budgets else []:
            ax.plot(minutes, accuracy[budget], linestyle="--", color=line.get_color(), alpha=0.6,
                    label=f"{run.name} ({budget})")
    ax.set_xlabel("training wall time (minutes)")
    ax.set_ylabel(f"{' / '.join(sorted(splits))} accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
