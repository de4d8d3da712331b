"""MEAL's claim on Fashion-MNIST at the CPU scale of benchmarks/claims.py (issue 14, docs/results.md), each run with
several seeds: a student distilled from the zoo's converged teachers beats the same network trained alone.

The student is the single network of the other claims (timm resnet10t, small_images, 16-32-64-128, stem 8; 0.31 M
parameters), trained without labels by MEAL (configs/meal-fmnist.yaml: one teacher drawn per iteration, similarity
at the 1/4 and 1/8 stages and the logits, adversarial discriminators) from ``resnet10t.fmnist`` (94.4%) and
``hne-resnet10t.fmnist`` (93.1%, logits only); and by plain KD from ``resnet10t.fmnist`` alone
(configs/meal-kd-fmnist.yaml), for reference; and by MEAL from ``resnet10t.fmnist`` alone, which separates what
the second, weaker teacher costs from what MEAL's label-free objective costs against KD; and by KD's loss (logits at
T = 4 and the labels, half each) plus MEAL's block-wise and adversarial terms at the same ratio to the logits tap,
which tells whether those terms help. The taps are the 1/4 and 1/8 stages of the config (layer3 and layer4 of the
small-image resnet10t student and teacher: 7×7 and 4×4).

    python benchmarks/meal_claims.py --seeds 0 1       # train what is missing (about 20 min a run)
    python benchmarks/meal_claims.py --report          # the table of the kept runs, training nothing

Every run uses the same recipe (claims.RECIPE: NFE's, 6 epochs). Runs and kept results: benchmarks/claims.py.
"""
from __future__ import annotations

from claims import RECIPE, SINGLE, SMALL_RESNET10T, Claims, Kept, Run, mean_spread

STUDENT = ("model.name=deep-ensemble-resnet10t", *SMALL_RESNET10T, *RECIPE)
ONE_TEACHER = (*STUDENT, "distiller.args.teachers=[resnet10t.fmnist]")

CLAIMS = Claims("meal-claims", {
    "single": SINGLE,
    "meal": Run("MEAL from resnet10t + hne-resnet10t", "configs/meal-fmnist.yaml",
                (*STUDENT, "distiller.args.teachers=[resnet10t.fmnist,hne-resnet10t.fmnist]")),
    "kd": Run("KD from resnet10t", "configs/meal-kd-fmnist.yaml", STUDENT),
    "meal-one-teacher": Run("MEAL from resnet10t alone", "configs/meal-fmnist.yaml", ONE_TEACHER),
    "meal-one-teacher-kd-terms": Run("KD from resnet10t + MEAL's block-wise and adversarial terms",
                                     "configs/meal-fmnist.yaml",
                                     (*ONE_TEACHER, "distiller.args.weights=[0.005,0.025,0.5]",
                                      "distiller.args.label_weight=0.5", "distiller.args.temperature=4.0")),
})


def row(kept: list[Kept]) -> list[str]:
    full = [k.budgets["1"] for k in kept]
    return [mean_spread([f["acc"] for f in full], 2, 100), mean_spread([f["nll"] for f in full], 3),
            mean_spread([f["ece"] for f in full], 3), mean_spread([k.minutes for k in kept], 1)]


def report() -> None:
    CLAIMS.table(["test acc (%)", "NLL", "ECE", "training min (idle)"], row)


if __name__ == "__main__":
    CLAIMS.main(__doc__, report)
