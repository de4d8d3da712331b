"""NFE's claim on Fashion-MNIST at a CPU budget: fission ensembles (N = 2, 3; each pruning-at-initialisation method)
against the single dense network and deep ensembles of about the same effective parameters. Trains the runs (or
reuses finished ones) in priority order and prints one table of accuracy per exit, ensemble accuracy and cost.

    python benchmarks/nfe_claims.py                  # train what is missing, then print the table
    python benchmarks/nfe_claims.py --report         # the table of the runs finished so far, training nothing
    python benchmarks/nfe_claims.py --only single nfe3-snip de3 --seeds 0 1

Runs train in ``runs/nfe-claims/seed<S>/<name>`` (checkpoints: a half-finished run resumes, so an interrupted
invocation continues where it stopped). A finished run's ``metrics.json`` and ``metrics.jsonl`` are copied to
``benchmarks/results/nfe-claims/seed<S>/<name>/``, which is tracked: the table survives a fresh clone, and a run
with a copy there is not trained again. Every run uses NFE's recipe (SGD Nesterov 0.1, wd 5e-4, batch 128,
piecewise-linear schedule) for the epochs of its config (6); the configs say how the models are sized
(docs/nfe.md). Accuracies are on the test split; with several seeds the table gives their mean and spread.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from selfens_core import engine
from selfens_core.config import load_config

RUNS_DIR = Path("runs/nfe-claims")
RESULTS_DIR = Path(__file__).parent / "results" / "nfe-claims"
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
    """Train one run unless its results are already kept, then keep its metrics in the repository."""
    kept = RESULTS_DIR / f"seed{seed}" / name
    if (kept / "metrics.json").exists():
        return
    out = RUNS_DIR / f"seed{seed}" / name
    if not (out / "metrics.json").exists():
        _, config, overrides = RUNS[name]
        print(f"--- training {name} (seed {seed}): {config} {' '.join(overrides)}", flush=True)
        cfg = load_config(config, [*overrides, f"train.seed={seed}"])
        engine.train(cfg, out, resume=(out / "checkpoints").is_dir(), progress=False)
    kept.mkdir(parents=True, exist_ok=True)
    for file in ("metrics.json", "metrics.jsonl"):
        shutil.copy(out / file, kept / file)


def _mean_spread(values: list[float], digits: int) -> str:
    """``mean`` for one value, ``mean ± half range`` for several."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def row(name: str) -> str | None:
    """One table row: the mean over the seeds kept for ``name`` (None when there are none)."""
    runs = sorted(RESULTS_DIR.glob(f"seed*/{name}/metrics.json"))
    if not runs:
        return None
    metrics = [json.loads(path.read_text()) for path in runs]
    finals = [m["members"][list(m["members"])[-1]] for m in metrics]
    exits = " / ".join(_mean_spread([m["member_acc"][i] for m in metrics], 4)
                       for i in range(len(metrics[0]["member_acc"])))
    minutes = statistics.fmean(
        sum(json.loads(line)["seconds"] for line in (path.parent / "metrics.jsonl").read_text().splitlines()) / 60
        for path in runs)
    first, last = metrics[0], finals[0]
    return (f"| {RUNS[name][0]} | {len(runs)} | {exits} | {_mean_spread([f['acc'] for f in finals], 4)} | "
            f"{_mean_spread([f['nll'] for f in finals], 3)} | "
            f"{first.get('effective_params', first['params']) / 1e6:.3f} | {first['params'] / 1e6:.3f} | "
            f"{last.get('effective_flops', last['flops']) / 1e6:.1f} | {last['flops'] / 1e6:.1f} | {minutes:.1f} |")


def report() -> None:
    print("\n| configuration | seeds | test acc per exit / member | ensemble | NLL | effective M params "
          "| dense M params | effective MFLOP | dense MFLOP | training min |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in RUNS:
        line = row(name)
        print(line if line else f"| {RUNS[name][0]} | 0 | not run yet | | | | | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(RUNS), help="train only these runs (default: all, in order)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train each run once per seed")
    parser.add_argument("--report", action="store_true", help="print the table of finished runs; train nothing")
    args = parser.parse_args()
    if not args.report:
        for seed in args.seeds:
            for name in args.only or RUNS:
                train(name, seed)
    report()


if __name__ == "__main__":
    main()
