"""The example plugin's tests: what it registers, its combiner, and the selfens model contract for its method."""
import subprocess
import sys
from pathlib import Path

import pytest
import selfens_core
import torch
from selfens_core import testing

import selfens_example_plugin
from selfens_example_plugin.combiners import MedianProbs


def test_registers_a_combiner_and_a_method(isolated_registries):
    regs = isolated_registries(selfens_example_plugin)
    assert regs.combiners.entry("median_probs").obj is MedianProbs
    assert regs.models.registered_by("selfens_example_plugin") == ["example-multihead"]
    assert regs.models.entry("example-multihead").options["combiner"] == "median_probs"


def test_median_is_robust_to_one_confident_member():
    agree = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    outlier = torch.tensor([[-20.0, 20.0]])
    probs = MedianProbs()(torch.stack([*agree, *outlier]).unsqueeze(1))  # (3 members, 1 image, 2 classes)
    assert probs.argmax(-1).item() == 0
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))


@pytest.mark.parametrize("num_members", [1, 3])
def test_method_meets_the_model_contract(register_plugin, num_members):
    register_plugin(selfens_example_plugin)  # a no-op when the package is installed
    testing.check_model_contract("example-multihead", num_members=num_members, width=8)


def test_create_uses_the_recipe_combiner(register_plugin):
    register_plugin(selfens_example_plugin)
    model = selfens_core.create("example-multihead", num_classes=10, in_chans=1)
    assert isinstance(model.combiner, MedianProbs) and model.num_members == 4


def test_importing_the_plugin_imports_no_torch():
    """selfens imports every installed plugin to call its hooks: keep the module itself light."""
    code = "import sys, selfens_example_plugin; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
