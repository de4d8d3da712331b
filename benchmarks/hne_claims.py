"""HNE's claims on Fashion-MNIST at a CPU budget (issue 14, docs/results.md), each run with several seeds:

1. HNE beats the single network at equal training wall time: the 4-member HNE of the zoo (timm resnet10t at 3/8
   width, sharing stem, layer1 and layer2) for 17 epochs (its epochs cost 1.13× the single network's on the idle
   CPU: 179 vs 158 s) against the single network of ``configs/resnet10t-fmnist.yaml`` for 20;
2. L_I + L_HD lifts the 1- and 2-member budgets over L_I alone (same HNE and budget, objective ``li``);
3. HNE with all members against a deep ensemble of its leaves at about equal FLOPs: two independent leaf networks
   (2 × 72 = 144 MFLOP against HNE's 134), 17 epochs.

    python benchmarks/hne_claims.py --seeds 0 1        # train what is missing (about 50 min a run), print the tables
    python benchmarks/hne_claims.py --report           # the tables of the kept runs, training nothing

Runs and kept results: benchmarks/claims.py.
"""
from __future__ import annotations

from claims import Claims, Kept, Run, mean_spread

HNE = "configs/hne-resnet10t-fmnist.yaml"
EQUAL_TIME = ("train.epochs=17",)

CLAIMS = Claims("hne-claims", {
    "single": Run("single network, 20 epochs", "configs/resnet10t-fmnist.yaml"),
    "hne-li-lhd": Run("HNE L_I + L_HD, 17 epochs", HNE, EQUAL_TIME),
    "hne-li": Run("HNE L_I, 17 epochs", HNE, (*EQUAL_TIME, "distiller.args.objective=li")),
    "de2-leaves": Run("deep ensemble of 2 HNE leaves, 17 epochs", "configs/resnet10t-fmnist.yaml",
                      (*EQUAL_TIME, "model.args.num_members=2", "model.args.channels=[24,48,96,192]",
                       "model.args.stem_width=16", "combiner.name=mean_logits")),
})


def row(kept: list[Kept]) -> list[str]:
    budgets = list(kept[0].budgets)
    accuracy = " / ".join(f"{b}: {mean_spread([k.budgets[b]['acc'] for k in kept], 2, 100)}" for b in budgets)
    members = " / ".join(mean_spread([k.metrics["member_acc"][i] for k in kept], 2, 100)
                         for i in range(len(kept[0].metrics["member_acc"])))
    flops = " / ".join(f"{kept[0].budgets[b]['flops'] / 1e6:.0f}" for b in budgets)
    return [accuracy, members, flops, mean_spread([k.minutes for k in kept], 1)]


def report() -> None:
    CLAIMS.table(["test accuracy (%) per member budget", "member accuracies (%)", "MFLOP per budget",
                  "training min (idle)"], row)


if __name__ == "__main__":
    CLAIMS.main(__doc__, report)
