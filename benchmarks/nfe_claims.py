"""NFE's claim on Fashion-MNIST at a CPU budget: fission ensembles (N = 2, 3; each pruning-at-initialisation method)
against the single dense network and deep ensembles of about the same effective parameters. Trains the runs (or
reuses finished ones) in priority order and prints one table of accuracy per exit, ensemble accuracy and cost.

    python benchmarks/nfe_claims.py                  # train what is missing, then print the table
    python benchmarks/nfe_claims.py --report         # the table of the runs finished so far, training nothing
    python benchmarks/nfe_claims.py --only single nfe3-snip de3

Runs go to ``runs/nfe-claims/<name>`` and are skipped when their ``metrics.json`` exists; a half-finished run resumes
from its checkpoint, so an interrupted invocation continues where it stopped. Every run uses NFE's recipe (SGD
Nesterov 0.1, wd 5e-4, batch 128, piecewise-linear schedule) for the epochs of its config (6), seed 0; the configs
say how the models are sized (docs/nfe.md). Accuracies are on the test split.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfens_core import engine
from selfens_core.config import load_config

ROOT = Path("runs/nfe-claims")
NFE = "configs/nfe-resnet10t-fmnist.yaml"
SINGLE = "configs/nfe-single-resnet10t-fmnist.yaml"
DEEP = "configs/nfe-deep-ensemble-resnet10t-fmnist.yaml"
FISSION_ONLY = ["model.args.sparsity=0", "model.args.channels=[16,32,64,128]", "model.args.stem_width=8"]
N2 = ["model.args.num_members=2"]

# name -> (label, config, overrides), in the order they are trained: the headline comparison first.
RUNS: dict[str, tuple[str, str, list[str]]] = {
    "single": ("single network", SINGLE, []),
    "nfe3-snip": ("NFE N=3, SNIP 0.5", NFE, []),
    "de3": ("deep ensemble N=3", DEEP, []),
    "nfe2-snip": ("NFE N=2, SNIP 0.5", NFE, N2),
    "de2": ("deep ensemble N=2", DEEP, [*N2, "model.args.channels=[12,24,48,92]"]),
    "nfe3-grasp": ("NFE N=3, GraSP 0.5", NFE, ["model.args.pruning=grasp"]),
    "nfe3-synflow": ("NFE N=3, SynFlow 0.5", NFE, ["model.args.pruning=synflow"]),
    "nfe3-random": ("NFE N=3, random 0.5", NFE, ["model.args.pruning=random"]),
    "nfe3-fission": ("NFE N=3, fission only", NFE, FISSION_ONLY),
    "nfe2-grasp": ("NFE N=2, GraSP 0.5", NFE, [*N2, "model.args.pruning=grasp"]),
    "nfe2-synflow": ("NFE N=2, SynFlow 0.5", NFE, [*N2, "model.args.pruning=synflow"]),
    "nfe2-random": ("NFE N=2, random 0.5", NFE, [*N2, "model.args.pruning=random"]),
    "nfe2-fission": ("NFE N=2, fission only", NFE, [*N2, *FISSION_ONLY]),
}


def train(name: str, seed: int) -> None:
    out = ROOT / name
    if (out / "metrics.json").exists():
        return
    _, config, overrides = RUNS[name]
    print(f"--- training {name}: {config} {' '.join(overrides)}", flush=True)
    cfg = load_config(config, [*overrides, f"train.seed={seed}"])
    engine.train(cfg, out, resume=(out / "checkpoints").is_dir(), progress=False)


def row(name: str) -> str | None:
    run = ROOT / name
    if not (run / "metrics.json").exists():
        return None
    metrics = json.loads((run / "metrics.json").read_text())
    last = metrics["members"][list(metrics["members"])[-1]]
    exits = " / ".join(f"{acc:.4f}" for acc in metrics["member_acc"])
    minutes = sum(json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines()) / 60
    return (f"| {RUNS[name][0]} | {exits} | {last['acc']:.4f} | {last['nll']:.3f} | "
            f"{metrics.get('effective_params', metrics['params']) / 1e6:.3f} | {metrics['params'] / 1e6:.3f} | "
            f"{last.get('effective_flops', last['flops']) / 1e6:.1f} | {last['flops'] / 1e6:.1f} | {minutes:.1f} |")


def report() -> None:
    print("\n| configuration | test acc per exit / member | ensemble | NLL | effective M params | dense M params "
          "| effective MFLOP | dense MFLOP | training min |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in RUNS:
        line = row(name)
        print(line if line else f"| {RUNS[name][0]} | not run yet | | | | | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(RUNS), help="train only these runs (default: all, in order)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="print the table of finished runs; train nothing")
    args = parser.parse_args()
    if not args.report:
        for name in args.only or RUNS:
            train(name, args.seed)
    report()


if __name__ == "__main__":
    main()
