"""The core's CIFAR Wide ResNet: registered with timm, split by its backbone adapter, usable by every method by name."""
import pytest
import timm
import torch

import selfens_core
from selfens_core.backbones import BackboneError, is_timm_model
from selfens_core.factory import backbone_parts, create_backbone
from selfens_core.wide_resnet import WideResNet


def test_wrn28_10_has_the_papers_size_and_shape():
    model = create_backbone("wrn28_10", num_classes=100, in_chans=3)
    assert isinstance(model, WideResNet)
    assert sum(p.numel() for p in model.parameters()) == 36_536_884  # 36.5 M
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3)] == [4, 4, 4]
    assert model.layer3[0].conv1.out_channels == 640


def test_the_names_are_timm_models_with_overridable_arguments():
    assert all(is_timm_model(name) for name in ("wrn16_4", "wrn28_10", "wrn40_2"))
    tiny = timm.create_model("wrn28_10", depth=10, widen_factor=1, num_classes=7, in_chans=1)
    assert tiny(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("wrn16_4", pretrained=True)
    with pytest.raises(ValueError, match=r"6n \+ 4"):
        timm.create_model("wrn28_10", depth=12)


def test_the_adapter_split_computes_what_the_network_computes():
    model = create_backbone("wrn28_10", num_classes=5, in_chans=3, depth=10, widen_factor=2).eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(backbone_parts(model, "wrn28_10").forward(x), model(x))
    assert len(backbone_parts(model).stages) == 3


def test_small_images_is_refused_since_it_has_nothing_to_adapt():
    with pytest.raises(BackboneError, match="'wide_resnet' backbone adapter does not support small_images"):
        create_backbone("wrn16_4", num_classes=10, in_chans=3, small_images=True)


def test_every_method_builds_it_by_name():
    model = selfens_core.create("deep-ensemble-wrn16_4", num_classes=3, num_members=2, depth=10, widen_factor=1)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (2, 1, 3)
