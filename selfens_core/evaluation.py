"""Evaluation of a self-ensemble at every member budget: accuracy, NLL, ECE, Brier, disagreement, FLOPs."""
from __future__ import annotations

from typing import Any

import torch

from .data import AnySplit, DatasetInfo, iterate_batches, shard_slice
from .distributed import SINGLE, World, sum_over_ranks
from .ensemble import SelfEnsemble
from .metrics import MetricAccumulator, count_flops, count_params


@torch.no_grad()
def evaluate(model: SelfEnsemble, split: AnySplit, info: DatasetInfo, *, batch_size: int = 500,
             device: torch.device | str = "cpu", flops: bool = True, progress: bool = False,
             workers: int = 0, world: World = SINGLE) -> dict[str, Any]:
    """Metrics of ``model`` on ``split`` for each budget in ``model.budgets()``.

    All members run once per batch; a budget of ``k`` members combines the first ``k`` member outputs through
    ``model.combine`` (on the model's device), which is what ``model.predict(x, members=k)`` computes. FLOPs are per
    image, measured for each budget with ``torch.utils.flop_counter``; a model that reports its own cost
    (``effective_cost``, e.g. pruned weights) gets it beside them as ``effective_flops`` and ``effective_params``.

    Non-finite images or logits are refused (a ValueError naming the images' indices in ``split``) rather than scored:
    NaN probabilities would turn NLL, ECE and Brier into NaN and count as wrong answers in accuracy. An empty split is
    refused too. ``workers``: ``DataLoader`` processes that assemble the batches (see ``iterate_batches``).
    In a run of several processes (``world``), each scores its part of every batch and the metric sums are added up
    over the processes: every process returns the metrics of the whole split.
    """
    from tqdm.auto import tqdm

    if len(split) == 0:
        raise ValueError("evaluate: the split holds 0 images; there is nothing to evaluate")
    was_training = model.training
    model.eval()
    budgets = model.budgets()
    acc = MetricAccumulator(model.num_members, budgets)
    batches = iterate_batches(split, info, batch_size=batch_size, train=False, augment=False, seed=0, epoch=0,
                              workers=workers, shard=world.shard)
    for index, (x, y) in enumerate(tqdm(batches, total=-(-len(split) // batch_size), desc="eval",
                                        disable=not progress, leave=False)):
        if not len(x):  # this process's part of a last batch smaller than the number of processes
            continue
        first = index * batch_size
        start = first + shard_slice(min(batch_size, len(split) - first), *world.shard).start  # for error messages
        x, y = x.to(device), y.to(device)
        _refuse_non_finite(x, start, f"are non-finite after normalisation with mean {info.mean} and std {info.std}",
                           "fix the data or the normalisation (a std of 0 divides by zero)")
        outputs = model.outputs(x, features=model.combines_features)
        logits = outputs.logits.float()
        _refuse_non_finite(logits.transpose(0, 1), start, "got non-finite logits although they are finite",
                           "the model's weights are probably NaN or inf (a diverged run?)")
        acc.update(logits.cpu(), y.cpu(), lambda first, outputs=outputs: model.combine(outputs.first(len(first))).cpu())
    if world.size > 1:
        acc.merge(sum_over_ranks)
    result = acc.compute()
    if flops:
        example = torch.zeros(1, *info.input_size, device=device)
        for k in budgets:
            result["members"][str(k)]["flops"] = count_flops(model, example, members=k)
            effective = model.effective_cost(k)
            if effective:
                result["members"][str(k)]["effective_flops"] = effective["flops"]
                result["effective_params"] = effective["params"]  # the last budget's: every member
    result["params"] = count_params(model)
    result["num_samples"] = len(split)
    if split.cut_from is not None:  # a seeded cut of a larger split (data.subset, --subset): of how many
        result["num_samples_of"] = split.cut_from
    model.train(was_training)
    return result


def _refuse_non_finite(values: torch.Tensor, start: int, what: str, advice: str) -> None:
    """A ValueError naming the split indices of the rows (dim 0) of ``values`` that hold a NaN or inf."""
    if bool(torch.isfinite(values).all()):
        return
    bad = (start + (~torch.isfinite(values)).flatten(1).any(1).nonzero().flatten()).tolist()
    shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
    raise ValueError(f"evaluate: {len(bad)} image(s) {what} (split indices {shown}: the first batch holding any): "
                     f"{advice}; no metrics were computed (they would be NaN)")


def format_budget_table(metrics: dict[str, Any]) -> str:
    """A plain-text table of the per-budget metrics, as the CLI prints it."""
    rows = [f"{'members':>7} {'acc':>7} {'nll':>7} {'ece':>7} {'brier':>7} {'MFLOPs':>9}"]
    for k, m in metrics["members"].items():
        mflops = f"{m['flops'] / 1e6:9.1f}" if "flops" in m else f"{'-':>9}"
        rows.append(f"{k:>7} {m['acc']:7.4f} {m['nll']:7.4f} {m['ece']:7.4f} {m['brier']:7.4f} {mflops}")
    member_acc = ", ".join(f"{a:.4f}" for a in metrics["member_acc"])
    rows.append(f"member accuracy: {member_acc}")
    rows.append(f"disagreement: {metrics['disagreement']:.4f}   agreement (all members agree, K/N): "
                f"{metrics['agreement']:.4f}   params: {metrics['params']:,}")
    return "\n".join(rows)


def plot_budget(metrics: dict[str, Any], path: str, title: str = "") -> None:
    """Accuracy against FLOPs per image, one point per member budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(metrics["members"])
    mflops = [metrics["members"][k]["flops"] / 1e6 for k in ks]
    accs = [100 * metrics["members"][k]["acc"] for k in ks]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(mflops, accs, "o-")
    for k, x, y in zip(ks, mflops, accs):
        ax.annotate(k, (x, y), textcoords="offset points", xytext=(4, -10))
    ax.set(xlabel="MFLOPs per image", ylabel="accuracy (%)", title=title or "accuracy per member budget")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
