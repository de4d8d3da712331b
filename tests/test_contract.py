"""The contract suite (selfens_core.testing) catches deliberately broken tiny models, and names the failing check."""
import pytest
import torch
from torch import nn

from selfens_core import SelfEnsemble, testing
from selfens_core.hookspecs import hookimpl


class Tiny(SelfEnsemble):
    """A correct self-ensemble: one conv trunk shared by ``num_members`` linear heads (``members=k``: k heads)."""

    def __init__(self, *, num_classes: int, in_chans: int, num_members: int = 2):
        super().__init__(num_members=num_members, num_classes=num_classes, in_chans=in_chans, input_size=(8, 8),
                         min_input_size=4)
        self.trunk = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(4, num_classes) for _ in range(num_members))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean((2, 3))

    def forward_members(self, x: torch.Tensor, members: int) -> torch.Tensor:
        features = self.features(x)
        return torch.stack([head(features) for head in self.heads[:members]])


class SlicesAll(Tiny):
    """Computes every member, then keeps the first k: right values, but ``members=k`` saves nothing."""

    def forward_members(self, x, members):
        return super().forward_members(x, self.num_members)[:members]


class MixesTheBatch(Tiny):
    """Centres the features over the batch, in eval mode too: an image's logits depend on the other images."""

    def features(self, x):
        features = super().features(x)
        return features - features.mean(0, keepdim=True)


class ReturnsProbabilities(Tiny):
    """Ends in a softmax: (M, B, C) probabilities where logits are expected."""

    def forward_members(self, x, members):
        return super().forward_members(x, members).softmax(-1)


class BatchFirst(Tiny):
    """Returns (B, M, C)."""

    def forward_members(self, x, members):
        return super().forward_members(x, members).transpose(0, 1)


class UnusedLayer(Tiny):
    """Holds a layer no forward uses: it never gets a gradient."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.unused = nn.Linear(2, 2)


class Raises(Tiny):
    """Fails inside its forward."""

    def forward_members(self, x, members):
        raise RuntimeError("shape mismatch somewhere inside")


MODELS = {"tiny": Tiny, "tiny-slices-all": SlicesAll, "tiny-mixes-the-batch": MixesTheBatch,
          "tiny-returns-probabilities": ReturnsProbabilities, "tiny-batch-first": BatchFirst,
          "tiny-unused-layer": UnusedLayer, "tiny-raises": Raises}


class _TinyPlugin:
    @hookimpl
    def register_models(self, register):
        for name, cls in MODELS.items():
            register(name, cls, description=cls.__doc__.splitlines()[0])


@pytest.fixture
def tiny_models(register_plugin):
    register_plugin(_TinyPlugin(), name="tiny-models")


def test_a_correct_model_passes_every_check(tiny_models):
    testing.check_model_contract("tiny", num_classes=5)


@pytest.mark.parametrize(("name", "check", "message"), [
    ("tiny-slices-all", "check_prefix_cost",
     r"members=1 costs [\d,]+ FLOPs, not less than members=2 .*not every member and then slice"),
    ("tiny-mixes-the-batch", "check_batch_independence",
     r"image 0's eval-mode logits differ alone and within a batch of 3: the model mixes the images of a batch"),
    ("tiny-returns-probabilities", "check_forward",
     r"forward returned probabilities \(every row non-negative and summing to 1\); logits are expected"),
    ("tiny-batch-first", "check_forward", r"logits shaped \(3, 2, 5\), expected \(members, batch, classes\)"),
    ("tiny-unused-layer", "check_backward", r"no gradient reached \['unused.weight', 'unused.bias'\]"),
    ("tiny-raises", "check_forward", r"the model raised RuntimeError: shape mismatch somewhere inside"),
])
def test_each_broken_model_fails_the_check_that_names_its_fault(tiny_models, name, check, message):
    with pytest.raises(AssertionError, match=f"^{check}: {message}"):
        testing.check_model_contract(name, num_classes=5)
    model = MODELS[name](num_classes=5, in_chans=1)  # the check alone, on a model built by hand, says the same
    with pytest.raises(AssertionError, match=f"^{check}: {message}"):
        getattr(testing, check)(model)


class WithFeatures(Tiny):
    """Exposes each head's input as that member's features."""

    def forward_features(self, x, members):
        features = self.features(x)
        return torch.stack([head(features) for head in self.heads[:members]]), [features] * members


class FeaturesOfOneMember(WithFeatures):
    def forward_features(self, x, members):
        logits, features = super().forward_features(x, members)
        return logits, features[:1]


def test_features_are_checked_and_combined_through_the_model():
    model = WithFeatures(num_classes=5, in_chans=1, num_members=3)
    testing.check_features(model)
    outputs = model.outputs(torch.randn(2, 1, 8, 8), (2, 0), features=True)
    assert outputs.logits.shape == (2, 2, 5) and [f.shape for f in outputs.features] == [(2, 4), (2, 4)]
    with pytest.raises(AssertionError, match=r"^check_features: members=2: 1 feature tensors for 2 members"):
        testing.check_features(FeaturesOfOneMember(num_classes=5, in_chans=1, num_members=3))
    with pytest.raises(NotImplementedError, match="Tiny does not expose its members' features"):
        Tiny(num_classes=5, in_chans=1).outputs(torch.randn(2, 1, 8, 8), features=True)


def test_the_broken_models_pass_the_checks_before_the_one_that_catches_them():
    """Each new check catches what no other check did: slicing passes check_forward (the values are right), and a
    batch-mixing model passes check_forward and check_prefix_cost."""
    testing.check_forward(SlicesAll(num_classes=5, in_chans=1))
    testing.check_batch_independence(SlicesAll(num_classes=5, in_chans=1))
    mixing = MixesTheBatch(num_classes=5, in_chans=1)
    testing.check_forward(mixing)
    testing.check_prefix_cost(mixing)
    testing.check_backward(ReturnsProbabilities(num_classes=5, in_chans=1))


def test_every_assertion_of_a_check_starts_with_its_name():
    """Including torch.testing.assert_close failures (members=k not the first k of a full pass)."""
    class NotAPrefix(Tiny):
        def forward_members(self, x, members):
            return super().forward_members(x, members) + members  # members=1 shifts member 0 by 1, a full pass by 2

    with pytest.raises(AssertionError, match=r"^check_forward: members=1 differs from a full pass's first 1"):
        testing.check_forward(NotAPrefix(num_classes=5, in_chans=1))
    assert [c.__name__ for c in testing.CHECKS] == [
        "check_forward", "check_features", "check_batch_independence", "check_prefix_cost", "check_backward",
        "check_save_load", "check_eval_metrics"]
