"""Test accuracy against training wall time, one curve per run, from the runs' own ``metrics.jsonl``.

Each epoch record holds its training seconds and the accuracy per member budget measured after it (on the
validation split, or on the test split when none was held out: the record names which). The curve of a
self-ensemble is its full ensemble (largest budget); ``--budgets`` adds its other budgets as dashed lines. Wall
time counts training only (the per-epoch evaluation is excluded). This machine is shared and noisy: an epoch that
ran while another job held the cores takes several times its usual time (its ``images_per_s`` shows it). By default
every epoch of a phase is therefore timed at that phase's median epoch time, what the run costs on an otherwise idle
machine; ``--logged`` plots the logged times. The printed table gives both totals and the minutes to reach each of
``--targets``.

    python benchmarks/time_to_accuracy.py runs/resnet10t-fmnist runs/hne-resnet10t-fmnist --out time-to-accuracy.png
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def read_curve(run: Path, logged: bool = False) -> tuple[str, list[float], dict[str, list[float]]]:
    """(split name, cumulative training minutes, accuracy per budget) from ``run/metrics.jsonl``; epochs timed at
    their phase's median unless ``logged``."""
    log = run / "metrics.jsonl"
    if not log.is_file():
        raise SystemExit(f"{run} has no metrics.jsonl: is it a `selfens train` run directory?")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not records:
        raise SystemExit(f"{log} holds no finished epoch yet")
    split = "val" if "val_acc" in records[0] else "test"
    by_phase: dict[str, list[float]] = {}
    for record in records:
        by_phase.setdefault(record.get("phase", ""), []).append(record["seconds"])
    minutes, total = [], 0.0
    for record in records:
        total += (record["seconds"] if logged else statistics.median(by_phase[record.get("phase", "")])) / 60
        minutes.append(total)
    budgets = records[0][f"{split}_acc"].keys()
    return split, minutes, {b: [r[f"{split}_acc"][b] for r in records] for b in budgets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", required=True, help="the plot (.png)")
    parser.add_argument("--budgets", action="store_true", help="also plot every smaller member budget")
    parser.add_argument("--logged", action="store_true", help="the logged epoch times instead of phase medians")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.92, 0.93],
                        help="accuracies whose time to reach the table gives")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    splits = set()
    print("| run | members | epochs | final accuracy | minutes (median-timed) | minutes (logged) | "
          + " | ".join(f"min to {100 * t:g}%" for t in args.targets) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(args.targets))
    for run in args.runs:
        split, median_minutes, accuracy = read_curve(run)
        logged_minutes = read_curve(run, logged=True)[1]
        minutes = logged_minutes if args.logged else median_minutes
        logged, median = logged_minutes[-1], median_minutes[-1]
        splits.add(split)
        budgets = sorted(accuracy, key=int)
        line, = ax.plot(minutes, accuracy[budgets[-1]], marker="o", label=f"{run.name} ({budgets[-1]} members)")
        reached = [next((m for m, a in zip(minutes, accuracy[budgets[-1]]) if a >= t), None) for t in args.targets]
        print(f"| {run.name} | {budgets[-1]} | {len(minutes)} | {accuracy[budgets[-1]][-1]:.4f} ({split}) | "
              f"{median:.1f} | {logged:.1f} | " + " | ".join("never" if m is None else f"{m:.1f}" for m in reached)
              + " |")
        for budget in budgets[:-1] if args.budgets else []:
            ax.plot(minutes, accuracy[budget], linestyle="--", color=line.get_color(), alpha=0.6,
                    label=f"{run.name} ({budget})")
    ax.set_xlabel("training minutes on this machine" + (" (logged)" if args.logged else " (phase-median epochs)"))
    ax.set_ylabel(f"{' / '.join(sorted(splits))} accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
