"""Test accuracy against training wall time, one curve per run, from the runs' own ``metrics.jsonl``.

RUN is a ``selfens train`` run directory or a kept claims run (``benchmarks/results/<claims>/seed<S>/<run>``). Each
epoch record holds its training seconds and the accuracy per member budget measured after it (on the validation
split, or on the test split when none was held out: the record names which). The curve of a self-ensemble is its
full ensemble (largest budget); ``--budgets`` adds its other budgets as dashed lines. Wall time counts training only
(the per-epoch evaluation is excluded). This machine is shared and noisy: an epoch that ran while another job held
the cores takes several times its usual time (its ``images_per_s`` shows it). By default every epoch is therefore
timed at its phase's fastest epoch (``selfens_core.rundir.idle_epoch_seconds``: what the run costs on an otherwise
idle machine); ``--logged`` plots the logged times. The printed table gives both totals and the minutes to reach
each of ``--targets``.

    python benchmarks/time_to_accuracy.py benchmarks/results/nfe-claims/seed0/{single,nfe3-synflow} --out tta.png
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from selfens_core.rundir import idle_epoch_seconds, read_epoch_log


def run_label(run: Path) -> str:
    """``claims/seedS/run`` for a kept claims run (``.../<claims>/seed<S>/<run>``), else the directory's name."""
    return f"{run.parent.parent.name}/{run.parent.name}/{run.name}" if run.parent.name.startswith("seed") else run.name


def read_curve(run: Path) -> tuple[str, list[float], list[float], dict[str, list[float]]]:
    """(split name, cumulative training minutes at each phase's fastest epoch, cumulative logged minutes, accuracy
    per budget) from ``run/metrics.jsonl``."""
    records = read_epoch_log(run)
    if not records:
        raise SystemExit(f"{run} has no finished epoch in metrics.jsonl: is it a `selfens train` run directory?")
    split = "val" if "val_acc" in records[0] else "test"
    idle = [s / 60 for s in itertools.accumulate(idle_epoch_seconds(records))]
    logged = [s / 60 for s in itertools.accumulate(r["seconds"] for r in records)]
    budgets = records[0][f"{split}_acc"].keys()
    return split, idle, logged, {b: [r[f"{split}_acc"][b] for r in records] for b in budgets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or kept claims runs")
    parser.add_argument("--out", required=True, help="the plot (.png)")
    parser.add_argument("--budgets", action="store_true", help="also plot every smaller member budget")
    parser.add_argument("--logged", action="store_true", help="the logged epoch times instead of idle estimates")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.92, 0.93],
                        help="accuracies whose time to reach the table gives")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    splits = set()
    print("| run | members | epochs | final accuracy | minutes (idle) | minutes (logged) | "
          + " | ".join(f"min to {100 * t:g}%" for t in args.targets) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(args.targets))
    for i, run in enumerate(args.runs):
        split, idle_minutes, logged_minutes, accuracy = read_curve(run)
        minutes = logged_minutes if args.logged else idle_minutes
        label = run_label(run)
        splits.add(split)
        budgets = sorted(accuracy, key=int)
        members = f"{budgets[-1]} member" + ("s" if budgets[-1] != "1" else "")
        line, = ax.plot(minutes, accuracy[budgets[-1]], marker="os^D"[i // 10 % 4],  # 10 colours, then a new marker
                        label=f"{label} ({members})")
        reached = [next((m for m, a in zip(minutes, accuracy[budgets[-1]]) if a >= t), None) for t in args.targets]
        reached_cells = " | ".join("never" if m is None else f"{m:.1f}" for m in reached)
        print(f"| {label} | {budgets[-1]} | {len(minutes)} | {accuracy[budgets[-1]][-1]:.4f} ({split}) | "
              f"{idle_minutes[-1]:.1f} | {logged_minutes[-1]:.1f} | {reached_cells} |")
        for budget in budgets[:-1] if args.budgets else []:
            ax.plot(minutes, accuracy[budget], linestyle="--", color=line.get_color(), alpha=0.6,
                    label=f"{label} ({budget})")
    ax.set_xlabel("training minutes on this machine" + (" (logged)" if args.logged else " (idle estimate)"))
    ax.set_ylabel(f"{' / '.join(sorted(splits))} accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
