"""NFE's claim on Fashion-MNIST at a CPU budget: fission ensembles (N = 2, 3; each pruning-at-initialisation method)
against the single dense network and deep ensembles of about the same effective parameters. Trains the runs (or
reuses kept ones) in priority order and prints one table of test accuracy per exit, ensemble accuracy and cost.

    python benchmarks/nfe_claims.py                  # train what is missing, then print the table
    python benchmarks/nfe_claims.py --report         # the table of the kept runs, training nothing
    python benchmarks/nfe_claims.py --only single nfe3-snip de3 --seeds 0 1

Every run uses NFE's recipe (SGD Nesterov 0.1, wd 5e-4, batch 128, piecewise-linear schedule) for the epochs of its
config (6); the configs say how the models are sized (plugins/nfe/README.md). Runs and kept results:
benchmarks/claims.py.
"""
from __future__ import annotations

from claims import SINGLE, Claims, Kept, Run, mean_spread

NFE = "configs/nfe-resnet10t-fmnist.yaml"
DEEP = "configs/nfe-deep-ensemble-resnet10t-fmnist.yaml"
FISSION_ONLY = ("model.args.sparsity=0", "model.args.channels=[16,32,64,128]", "model.args.stem_width=8")
N2 = ("model.args.num_members=2",)

CLAIMS = Claims("nfe-claims", {  # the headline comparison first
    "single": SINGLE,
    "nfe3-snip": Run("NFE N=3, SNIP 0.5", NFE),
    "de3": Run("deep ensemble N=3", DEEP),
    "nfe2-snip": Run("NFE N=2, SNIP 0.5", NFE, N2),
    "de2": Run("deep ensemble N=2", DEEP, (*N2, "model.args.channels=[12,24,48,92]")),
    "nfe3-grasp": Run("NFE N=3, GraSP 0.5", NFE, ("model.args.pruning=grasp",)),
    "nfe3-synflow": Run("NFE N=3, SynFlow 0.5", NFE, ("model.args.pruning=synflow",)),
    "nfe3-random": Run("NFE N=3, random 0.5", NFE, ("model.args.pruning=random",)),
    "nfe3-fission": Run("NFE N=3, fission only", NFE, FISSION_ONLY),
    "nfe2-grasp": Run("NFE N=2, GraSP 0.5", NFE, (*N2, "model.args.pruning=grasp")),
    "nfe2-synflow": Run("NFE N=2, SynFlow 0.5", NFE, (*N2, "model.args.pruning=synflow")),
    "nfe2-random": Run("NFE N=2, random 0.5", NFE, (*N2, "model.args.pruning=random")),
    "nfe2-fission": Run("NFE N=2, fission only", NFE, (*N2, *FISSION_ONLY)),
})


def row(kept: list[Kept]) -> list[str]:
    full = [k.budgets[list(k.budgets)[-1]] for k in kept]
    exits = " / ".join(mean_spread([k.metrics["member_acc"][i] for k in kept], 2, 100)
                       for i in range(len(kept[0].metrics["member_acc"])))
    first, last = kept[0].metrics, full[0]
    return [exits, mean_spread([f["acc"] for f in full], 2, 100), mean_spread([f["nll"] for f in full], 3),
            f"{first.get('effective_params', first['params']) / 1e6:.3f}", f"{first['params'] / 1e6:.3f}",
            f"{last.get('effective_flops', last['flops']) / 1e6:.1f}", f"{last['flops'] / 1e6:.1f}",
            mean_spread([k.minutes for k in kept], 1)]


def report() -> None:
    CLAIMS.table(["test acc per exit / member (%)", "ensemble (%)", "NLL", "effective M params", "dense M params",
                  "effective MFLOP", "dense MFLOP", "training min (idle)"], row)


if __name__ == "__main__":
    CLAIMS.main(__doc__, report)
