"""IENet's claims on Fashion-MNIST at the CPU scale of benchmarks/claims.py (issue 14, docs/results.md), each run with
several seeds:

1. the ensemble beats its best sub-network: IENet-B on timm resnet10t (small_images, 16-32-64-128, stem 8), four
   sub-networks of widths 0.9/0.9/0.9/1.0 chosen by random cut (RC), stacking, each sub-network on its own shuffled
   batches for the first 10% of training (configs/ienet-mobilenetv2-fmnist.yaml's method, on resnet10t);
2. RC and shuffle-channel (SC) sub-networks are more diverse than slimmable ones: the same with ``selection``
   slimmable and sc; diversity is the fraction of test images on which all sub-networks agree (the paper's S);
3. IENet against a stand-alone network of equal inference cost: resnet10t at 29-58-116-232 (stem 15), 95 MFLOP
   against the 96 of IENet's four sub-networks;
4. code or recipe: four SC sub-networks of width 0.5 (``sc-half``, together the single network's 28 MFLOP), which
   share far fewer weights than the 0.9-width ones: if IENet's code combines members right, this ensemble gains over
   its best sub-network as a deep ensemble does, and a missing gain at width 0.9 comes from what they share.

    python benchmarks/ienet_claims.py --seeds 0 1      # train what is missing (about an hour an IENet run)
    python benchmarks/ienet_claims.py --report         # the table of the kept runs, training nothing

Every run uses the same recipe (claims.RECIPE: NFE's, 6 epochs; IENet keeps its gradient clipping at 5). Runs and
kept results: benchmarks/claims.py.
"""
from __future__ import annotations

from claims import RECIPE, SINGLE, SMALL_RESNET10T, Claims, Kept, Run, mean_spread

IENET = "configs/ienet-mobilenetv2-fmnist.yaml"
ON_RESNET10T = ("model.name=ienet-resnet10t", *SMALL_RESNET10T, *RECIPE)

CLAIMS = Claims("ienet-claims", {
    "rc": Run("IENet RC, stacking", IENET, ON_RESNET10T),
    "slimmable": Run("IENet slimmable, stacking", IENET, (*ON_RESNET10T, "model.args.selection=slimmable")),
    "standalone-equal-cost": Run("stand-alone 29-58-116-232", SINGLE.config,
                                 ("model.args.channels=[29,58,116,232]", "model.args.stem_width=15")),
    "single": SINGLE,
    "sc": Run("IENet SC, stacking", IENET, (*ON_RESNET10T, "model.args.selection=sc")),
    "sc-half": Run("IENet SC, 4 × width 0.5, stacking", IENET,
                   (*ON_RESNET10T, "model.args.selection=sc", "model.args.widths=[0.5,0.5,0.5,0.5]")),
})


def row(kept: list[Kept]) -> list[str]:
    full = [k.budgets[list(k.budgets)[-1]] for k in kept]
    members = [k.metrics["member_acc"] for k in kept]
    gain = [f["acc"] - max(m) for f, m in zip(full, members)]
    return [mean_spread([f["acc"] for f in full], 2, 100),
            " / ".join(mean_spread([m[i] for m in members], 2, 100) for i in range(len(members[0]))),
            mean_spread(gain, 2, 100) if len(members[0]) > 1 else "",
            mean_spread([k.metrics["agreement"] for k in kept], 3) if len(members[0]) > 1 else "",
            mean_spread([f["nll"] for f in full], 3), f"{full[0]['flops'] / 1e6:.0f}",
            f"{kept[0].metrics['params'] / 1e6:.2f}" if "params" in kept[0].metrics else "",
            mean_spread([k.minutes for k in kept], 1)]


def report() -> None:
    CLAIMS.table(["ensemble test acc (%)", "sub-network accuracies (%)", "ensemble − best sub-network (points)",
                  "all agree (S)", "NLL", "inference MFLOP", "M params", "training min (idle)"], row)


if __name__ == "__main__":
    CLAIMS.main(__doc__, report)
