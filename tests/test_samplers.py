"""Samplers: the per-member shuffled batches, the sampler context, and passes that name member indices."""
import pytest
import torch

import selfens_core
from selfens_core.samplers import AllMembers, Pass, ShuffledPerMember, plan_passes


def _batch(start, size=4):
    return torch.arange(start, start + size).float()[:, None], torch.arange(start, start + size)


def test_shuffled_sampler_gives_each_member_its_own_batch_then_all_members_one():
    sampler, g = ShuffledPerMember(shuffle_epochs=0.25), torch.Generator().manual_seed(0)
    seen = []
    for step in range(3):
        x, y = _batch(4 * step)
        passes = sampler.plan(x, y, epoch=0, progress=step / 12, num_members=3, generator=g)
        assert [p.members for p in passes] == [(0,), (1,), (2,)]
        for p in passes:
            assert len(p.inputs) == 4 and torch.equal(p.inputs[:, 0].long(), p.targets)  # pairs stay together
            assert set(p.targets.tolist()) <= set(range(4 * step + 4))  # drawn from this and earlier batches
        seen.append([p.targets.tolist() for p in passes])
    assert len({tuple(b) for b in seen[2]}) == 3  # three different batches in one step
    x, y = _batch(12)
    after = sampler.plan(x, y, epoch=0, progress=0.25, num_members=3, generator=g)
    assert len(after) == 1 and after[0].members is None and torch.equal(after[0].targets, y)


def test_shuffled_sampler_pool_starts_empty_each_epoch():
    sampler, g = ShuffledPerMember(shuffle_epochs=1.0, pool=2), torch.Generator().manual_seed(0)
    sampler.plan(*_batch(0), epoch=0, progress=0.0, num_members=2, generator=g)
    passes = sampler.plan(*_batch(100), epoch=1, progress=0.5, num_members=2, generator=g)
    assert all(set(p.targets.tolist()) <= set(range(100, 104)) for p in passes)
    with pytest.raises(ValueError, match="fraction of training"):
        ShuffledPerMember(shuffle_epochs=10)


def test_plan_receives_only_the_context_it_names():
    x, y = _batch(0)
    context = dict(epoch=0, num_epochs=1, generator=torch.Generator(), progress=0.0, num_members=2)
    assert plan_passes(AllMembers(), x, y, **context)[0].members is None  # AllMembers takes no progress/num_members
    assert len(plan_passes(ShuffledPerMember(), x, y, **context)) == 2


def test_pass_runs_all():
    x, y = _batch(0)
    assert Pass(x, y).runs_all(3) and Pass(x, y, 3).runs_all(3) and Pass(x, y, (0, 1, 2)).runs_all(3)
    assert not Pass(x, y, 2).runs_all(3) and not Pass(x, y, (1,)).runs_all(3)


def test_member_indices_select_members_in_any_model():
    model = selfens_core.create("deep-ensemble-hne-resnet-small", num_classes=3, in_chans=1, num_members=3).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        full = model(x)
        torch.testing.assert_close(model(x, members=(2, 0)), full[[2, 0]])
    with pytest.raises(ValueError, match=r"member indices must be distinct ints in \[0, 2\]"):
        model(x, members=(3,))
