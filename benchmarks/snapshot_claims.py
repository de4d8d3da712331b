"""Ensembles from one training run (SuperNet thesis §4.3: snapshot ensembles, Huang et al. 2017; fast geometric
ensembling, Garipov et al. 2018) on Fashion-MNIST at the CPU scale of benchmarks/claims.py, each with several seeds.

Only the network being trained runs in a training step, so a step costs the single network's: these are the
self-ensembles that can beat the single network at equal training wall time on a CPU. Every run has the budget of
the single network trained for 10 epochs (13 minutes, 93.0%):

1. FGE: 6 epochs of the CPU-scale recipe (the single network's 6-epoch run, down to 1% of the peak rate), then 3
   epochs of the triangular cycle (0.05 ↔ 0.0005, cycles of 6/7 epoch, so that the phase ends at its fourth minimum):
   a snapshot at each minimum, the last one the network itself; then the merge layer alone for 1 epoch;
2. snapshot ensemble: 9 epochs of cosine restarts from the peak rate (4 cycles of 2.25 epochs), a snapshot at each
   cycle's end, then 1 merge epoch;
3. the single network for 10 epochs (kept with the HNE claims) and for 6 (FGE's starting point, kept with NFE's).

    python benchmarks/snapshot_claims.py --seeds 0 1      # train what is missing (about 14 min a run), print the table
    python benchmarks/snapshot_claims.py --report         # the table of the kept runs, training nothing

Runs and kept results: benchmarks/claims.py.
"""
from __future__ import annotations

import dataclasses

from claims import RECIPE, SINGLE, SMALL_RESNET10T, Claims, Kept, Run, mean_spread
from hne_claims import CLAIMS as HNE_CLAIMS

# The recipe's training keys; the phases below set the epochs.
TRAIN = tuple(o for o in RECIPE if not o.startswith("train.epochs="))
FGE = ("phases.0.epochs=6", "phases.1.epochs=3", "phases.1.schedule_args.cycle_epochs=0.857142857")
SNAPSHOTS = ("phases.0.epochs=9", "train.schedule=cosine_restarts", "train.schedule_args.cycle_epochs=2.25",
             "phases.1.epochs=1")

CLAIMS = Claims("snapshot-claims", {
    "single-10ep": dataclasses.replace(HNE_CLAIMS.runs["single-10ep"], kept_in="hne-claims"),
    "fge": Run("FGE, 4 snapshots (6 + 3 epochs) + merge (1)", "configs/fge-resnet10t-fmnist.yaml",
               (*SMALL_RESNET10T, *TRAIN, *FGE)),
    "snapshots": Run("snapshot ensemble, 4 cosine restarts (9 epochs) + merge (1)",
                     "configs/snapshots-resnet10t-fmnist.yaml", (*SMALL_RESNET10T, *TRAIN, *SNAPSHOTS)),
    "single": SINGLE,
})


def row(kept: list[Kept]) -> list[str]:
    members = [[k.metrics["member_acc"][i] for k in kept] for i in range(len(kept[0].metrics["member_acc"]))]
    full = [k.budgets[list(k.budgets)[-1]]["acc"] for k in kept]
    over_best = " / ".join(f"{(f - max(k.metrics['member_acc'])) * 100:+.2f}" for f, k in zip(full, kept))
    return [" / ".join(mean_spread(m, 2, 100) for m in members), mean_spread(full, 2, 100),
            over_best if len(members) > 1 else "", mean_spread([k.minutes for k in kept], 1)]


def report() -> None:
    CLAIMS.table(["member accuracies (%), in snapshot order", "all members (%)", "all − best member, per seed",
                  "training min (idle)"], row)


if __name__ == "__main__":
    CLAIMS.main(__doc__, report)
