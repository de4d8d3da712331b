"""Metrics on hand-made tensors with known answers, and the streaming accumulator against the one-shot functions."""
import math

import pytest
import torch
from torch import nn

from selfens_core.metrics import (
    MetricAccumulator,
    accuracy,
    agreement_all,
    brier,
    count_flops,
    count_params,
    disagreement,
    ece,
    nll,
)


def _rows(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _onehot_logits(classes: list[int], num_classes: int = 3) -> torch.Tensor:
    """Logits ``(B, C)`` whose argmax is ``classes``."""
    return 5.0 * nn.functional.one_hot(torch.tensor(classes), num_classes).float()


def _mean_softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1).mean(0)


def test_perfect_confident_classifier():
    targets = torch.tensor([0, 2, 1, 2])
    probs = nn.functional.one_hot(targets, 3).float()
    assert accuracy(probs, targets) == 1.0
    assert ece(probs, targets) == 0.0
    assert brier(probs, targets) == 0.0
    assert nll(probs, targets) == pytest.approx(0.0, abs=1e-12)


def test_known_values():
    probs = _rows([0.9, 0.1], [0.9, 0.1], [0.65, 0.35], [0.25, 0.75])
    targets = torch.tensor([0, 1, 0, 0])
    assert accuracy(probs, targets) == 0.5
    expected_nll = -(math.log(0.9) + math.log(0.1) + math.log(0.65) + math.log(0.25)) / 4
    assert nll(probs, targets) == pytest.approx(expected_nll, rel=1e-6)
    expected_brier = (2 * 0.1**2 + 2 * 0.9**2 + 2 * 0.35**2 + 2 * 0.75**2) / 4
    assert brier(probs, targets) == pytest.approx(expected_brier, rel=1e-6)
    # bins of width 0.5: (0.5, 1] holds all four; mean confidence 0.8, accuracy 0.5
    assert ece(probs, targets, n_bins=2) == pytest.approx(0.3, rel=1e-6)
    # 10 bins: conf 0.9 has acc 0.5 (0.4 * 2/4); conf 0.65 has acc 1 (0.35 / 4); conf 0.75 has acc 0 (0.75 / 4)
    assert ece(probs, targets, n_bins=10) == pytest.approx(0.2 + 0.0875 + 0.1875, rel=1e-6)


def test_nll_clamps_zero_probability():
    probs = _rows([1.0, 0.0])
    assert nll(probs, torch.tensor([1])) == pytest.approx(-math.log(1e-12))


def test_disagreement_and_agreement():
    a = _onehot_logits([0, 1, 2, 0])
    b = _onehot_logits([0, 1, 0, 1])
    assert disagreement(torch.stack([a, b])) == 0.5
    assert disagreement(a[None]) == 0.0
    assert agreement_all(a[None]) == 1.0
    c = _onehot_logits([0, 2, 2, 0])
    three = torch.stack([a, b, c])
    # pairs (a,b): 2/4, (a,c): 1/4, (b,c): 3/4
    assert disagreement(three) == pytest.approx((2 + 1 + 3) / 12)
    assert agreement_all(three) == 0.25  # only sample 0


def test_count_flops_linear_and_conv():
    assert count_flops(nn.Linear(10, 20), torch.randn(1, 10)) == 2 * 10 * 20
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    expected = 2 * (8 * 6 * 6) * (3 * 3 * 3)  # 2 * output elements * multiply-adds per output
    assert count_flops(conv, torch.randn(1, 3, 6, 6)) == expected
    assert count_flops(conv, torch.randn(2, 3, 6, 6)) == 2 * expected


def test_count_flops_passes_kwargs_and_keeps_mode():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, repeats=1):
            for _ in range(repeats):
                x = self.fc(x)
            return x

    model = Scaled().train()
    assert count_flops(model, torch.randn(1, 4), repeats=3) == 3 * 2 * 4 * 4
    assert model.training


def test_count_params_tied_weight_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    assert count_params(Tied()) == 40
    assert count_params(nn.Linear(3, 2)) == 8


def test_accumulator_matches_one_shot():
    torch.manual_seed(0)
    num_members, budgets = 4, [1, 2, 4]
    batches = [(torch.randn(num_members, n, 5) * 2, torch.randint(0, 5, (n,))) for n in (7, 32, 1, 20)]
    acc = MetricAccumulator(num_members, budgets)
    for logits, targets in batches:
        acc.update(logits, targets, _mean_softmax)
    result = acc.compute()

    logits = torch.cat([b[0] for b in batches], dim=1)
    targets = torch.cat([b[1] for b in batches])
    assert set(result["members"]) == {"1", "2", "4"}
    for k in budgets:
        probs = torch.cat([_mean_softmax(b[0][:k]) for b in batches])
        got = result["members"][str(k)]
        assert got["ece"] == ece(probs, targets)  # exactly equal, not approximately
        assert got["acc"] == accuracy(probs, targets)
        assert got["nll"] == pytest.approx(nll(probs, targets), rel=1e-12)
        assert got["brier"] == pytest.approx(brier(probs, targets), rel=1e-12)
    member_acc = [accuracy(logits[m], targets) for m in range(num_members)]
    assert result["member_acc"] == pytest.approx(member_acc, rel=1e-12)
    assert result["disagreement"] == pytest.approx(disagreement(logits), rel=1e-12)
    assert result["agreement"] == agreement_all(logits)


def test_accumulator_validates():
    with pytest.raises(ValueError):
        MetricAccumulator(2, [3])
    acc = MetricAccumulator(2, [2])
    with pytest.raises(ValueError):
        acc.compute()
    with pytest.raises(ValueError):
        acc.update(torch.randn(3, 4, 5), torch.zeros(4, dtype=torch.long), _mean_softmax)
