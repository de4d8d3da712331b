"""The core's combiners on hand-made member outputs, and how models and the engine use them."""
import types

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

import selfens_core
from selfens_core import engine
from selfens_core.combiners import MeanLogits, MeanProbs, Stacking, Voting, WeightedMean
from selfens_core.distillers import Independent
from selfens_core.factory import build_component
from selfens_core.samplers import Pass


def _logits_voting_for(classes, num_classes=4):
    """Member logits (M, 1, C) whose argmax per member is ``classes[m]``."""
    return F.one_hot(torch.tensor(classes), num_classes).float()[:, None, :] * 5


def test_mean_logits_and_mean_probs():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])
    torch.testing.assert_close(MeanLogits()(logits), torch.tensor([[1.0, 0.0]]).softmax(-1))
    expected = (torch.tensor([2.0, 0.0]).softmax(-1) + torch.tensor([0.5, 0.5])) / 2
    torch.testing.assert_close(MeanProbs()(logits), expected[None])


def test_voting_majority_and_vote_shares():
    probs = Voting()(_logits_voting_for([2, 2, 1]))
    assert probs.argmax(-1).item() == 2
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))
    assert probs[0, 2] == pytest.approx(2 / 3, abs=1e-3) and probs[0, 1] == pytest.approx(1 / 3, abs=1e-3)


def test_voting_tie_goes_to_the_higher_mean_probability_whatever_the_batch():
    tie = _logits_voting_for([0, 0, 3, 3])  # a 2-2 vote
    tie[2, 0, 3] = 6.0  # members 3 and 4 are more confident than members 1 and 2
    assert Voting()(tie).argmax(-1).item() == 3
    tie[2, 0, 3] = 4.0
    assert Voting()(tie).argmax(-1).item() == 0
    batch = torch.cat([_logits_voting_for([1, 1, 2, 2]), tie, torch.randn(4, 5, 4)], dim=1)
    for image in range(batch.shape[1]):  # each image's answer is the same alone as in the batch
        torch.testing.assert_close(Voting()(batch)[image], Voting()(batch[:, image:image + 1])[0])


def test_stacking_is_an_nc_by_c_map_of_member_probabilities():
    stacking = Stacking(num_members=3, num_classes=4)
    assert stacking.weight.shape == (12, 4) and sum(p.numel() for p in stacking.parameters()) == 3 * 4 * 4
    logits = torch.randn(3, 5, 4)
    torch.testing.assert_close(stacking(logits).argmax(-1), MeanProbs()(logits).argmax(-1))  # starts as averaging
    with torch.no_grad():
        stacking.weight.copy_(torch.randn(12, 4))
    o = logits.softmax(-1).permute(1, 0, 2).reshape(5, 12)  # [o_1 o_2 o_3] per sample
    torch.testing.assert_close(stacking(logits), (o @ stacking.weight).softmax(-1))
    first_two = (o[:, :8] @ stacking.weight[:8] * 1.5).softmax(-1)  # k < N members: their rows, scaled N/k
    torch.testing.assert_close(stacking(logits[:2]), first_two)


def test_weighted_mean_starts_as_averaging_and_learns_member_weights():
    weighted = WeightedMean(num_members=2)
    logits = torch.randn(2, 3, 5)
    torch.testing.assert_close(weighted(logits), MeanProbs()(logits))
    with torch.no_grad():
        weighted.scores.copy_(torch.tensor([0.0, 1e4]))
    torch.testing.assert_close(weighted(logits), logits[1].softmax(-1))
    torch.testing.assert_close(weighted(logits[:1]), logits[0].softmax(-1))


def test_trainable_combiners_learn_from_their_loss():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 64, 3), torch.randint(0, 3, (64,))
    logits[2, torch.arange(64), y] += 4  # member 2 is the one to trust
    weighted = WeightedMean(num_members=4)
    for combiner in (Stacking(num_members=4, num_classes=3), weighted):
        optimizer = torch.optim.SGD(combiner.parameters(), lr=1.0)
        before = combiner.loss(logits, y).item()
        for _ in range(50):
            optimizer.zero_grad()
            combiner.loss(logits, y).backward()
            optimizer.step()
        assert combiner.loss(logits, y).item() < before
    assert weighted.scores.argmax().item() == 2


def test_models_size_the_combiner_they_are_given():
    model = selfens_core.create("hne-resnet-small", num_classes=10, in_chans=1, num_members=4, combiner="stacking")
    stacking = model.combiner
    assert stacking.weight.shape == (40, 10)
    model.combiner = build_component("combiners", "weighted")
    assert model.combiner.scores.shape == (4,)
    other = selfens_core.create("hne-resnet-small", num_classes=10, in_chans=1, num_members=2)
    with pytest.raises(ValueError, match="sized for a \\(40, 10\\) map, not 2 members × 10 classes"):
        other.combiner = stacking
    with pytest.raises(RuntimeError, match="not sized"):
        Stacking()(torch.randn(2, 1, 3))


def test_engine_trains_a_combiner_on_detached_outputs_of_all_member_passes():
    model = selfens_core.create("hne-resnet-small", num_classes=3, in_chans=1, num_members=2, combiner="stacking")
    s = types.SimpleNamespace(model=model, forward=model.outputs, distiller=Independent(), device=torch.device("cpu"),
                              phase_distillers={},
                              cfg=OmegaConf.create({"train": {"channels_last": False}}))
    run = types.SimpleNamespace(members_train=True, combiner_trains=True, phase=types.SimpleNamespace(index=0))
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 3, (4,))
    terms = engine._loss_terms(s, run, Pass(x, y, None))
    terms["combiner"].backward()
    assert model.combiner.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("combiner."))
    assert "combiner" not in engine._loss_terms(s, run, Pass(x, y, (1,)))  # one member: nothing to stack
