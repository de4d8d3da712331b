import pytest
import torch
from selfens_plugins.hne.losses import HierarchicalDistillation
from torch.nn import functional as F

from selfens_core.distillers import (
    CoDistillation,
    Independent,
    co_distillation,
    member_cross_entropy,
    soft_cross_entropy,
)


def _outputs(m=4, b=5, c=3):
    return torch.randn(m, b, c, requires_grad=True), torch.randint(0, c, (b,))


def test_member_cross_entropy_is_the_sum_over_members():
    out, y = _outputs()
    expected = sum(F.cross_entropy(o, y) for o in out)
    torch.testing.assert_close(member_cross_entropy(out, y), expected)
    assert Independent()(out, y).keys() == {"ce"}


def test_soft_cross_entropy_is_zero_for_identical_logits_and_carries_t_squared():
    logits = torch.randn(6, 4)
    assert soft_cross_entropy(logits, logits, 2.0).abs() < 1e-6
    target = torch.randn(6, 4)
    kl = F.kl_div(F.log_softmax(logits / 3, -1), F.softmax(target / 3, -1), reduction="batchmean")
    torch.testing.assert_close(soft_cross_entropy(logits, target, 3.0), 9 * kl)


def test_hne_objectives():
    out, y = _outputs(m=8)
    li = member_cross_entropy(out, y)
    assert HierarchicalDistillation("li")(out, y)["li"].item() == pytest.approx(li.item())
    lh = sum(F.cross_entropy(out[: 2**b].mean(0), y) for b in range(4))
    assert HierarchicalDistillation("lh")(out, y)["lh"].item() == pytest.approx(lh.item())
    terms = HierarchicalDistillation("li+lhd", alpha=0.25, temperature=2.0)(out, y)
    lhd = sum(soft_cross_entropy(out[: 2**b].mean(0), out.mean(0), 2.0) for b in range(3))
    assert terms["li"].item() == pytest.approx(0.75 * li.item())
    assert terms["lhd"].item() == pytest.approx(0.25 * lhd.item())
    cd = HierarchicalDistillation("li+cd", alpha=0.5)(out, y)["cd"]
    assert cd.item() == pytest.approx(0.5 * sum(soft_cross_entropy(o, out.mean(0), 2.0) for o in out).item())


def test_co_distillation_is_ce_plus_t_squared_kl_from_the_detached_mean_logits():
    out, y = _outputs(m=3)
    q = F.softmax(out.detach().mean(0) / 3, -1)
    kl = sum(F.kl_div(F.log_softmax(o / 3, -1), q, reduction="batchmean") * 9 for o in out)
    terms = CoDistillation(weight=0.5)(out, y)
    assert terms.keys() == {"ce", "cd"}
    assert terms["ce"].item() == pytest.approx(member_cross_entropy(out, y).item())
    assert terms["cd"].item() == pytest.approx(0.5 * kl.item())
    CoDistillation()(out[:, :1] * torch.tensor([1.0, 0.0, 0.0])[:, None, None], y[:1])["cd"].backward()
    assert out.grad[1:].abs().sum() == 0  # members 1, 2 enter only through the (detached) target


def test_hne_co_distillation_is_the_core_one_scaled_by_alpha():
    out, y = _outputs(m=4)
    ce, cd = co_distillation(out, y, 2.0)
    terms = HierarchicalDistillation("li+cd", alpha=0.3)(out, y)
    assert terms["li"].item() == pytest.approx(0.7 * ce.item())
    assert terms["cd"].item() == pytest.approx(0.3 * cd.item())


def test_hierarchical_distillation_targets_are_detached():
    out, y = _outputs(m=2)
    HierarchicalDistillation("li+lhd", alpha=1.0)(out, y)["lhd"].backward()
    assert out.grad[1].abs().sum() == 0  # member 1 is only in y^E, the (detached) target
    assert out.grad[0].abs().sum() > 0


def test_one_member_has_no_distillation_term():
    out, y = _outputs(m=1)
    assert HierarchicalDistillation()(out, y)["lhd"].item() == 0.0


def test_bad_hne_options():
    with pytest.raises(ValueError, match="unknown HNE objective 'lhd'; choose one of li, lh, li\\+cd, li\\+lhd"):
        HierarchicalDistillation("lhd")
    with pytest.raises(ValueError, match="alpha"):
        HierarchicalDistillation(alpha=2.0)
