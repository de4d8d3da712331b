"""small_images: one backbone-adapter option that every method's timm path shares."""
import pytest
import torch

import selfens_core
from selfens_core.backbones import BackboneAdapter, BackboneError
from selfens_core.factory import create_backbone


@pytest.mark.parametrize("name", ["resnet10t", "resnet18", "mobilenetv2_100", "efficientnet_b0"])
def test_small_images_removes_the_first_two_downsamplings(name):
    x = torch.zeros(1, 1, 32, 32)
    plain = create_backbone(name, num_classes=10, in_chans=1).eval()
    small = create_backbone(name, num_classes=10, in_chans=1, small_images=True).eval()
    assert plain.forward_features(x).shape[-1] == 1  # total stride 32
    assert small.forward_features(x).shape[-1] == 4  # total stride 8
    assert small(x).shape == (1, 10)
    # stages are picked by reduction (MEAL's taps): feature_info must say where each stage now is
    assert [i["reduction"] for i in small.feature_info] == [1, 1, 2, 4, 8]
    assert [i["reduction"] for i in plain.feature_info] == [2, 4, 8, 16, 32]


@pytest.mark.parametrize("name", ["hne-resnet10t", "ienet-resnet10t", "deep-ensemble-resnet10t"])
def test_every_method_takes_the_option(name):
    args = dict(num_classes=10, in_chans=1, small_images=True, channels=(8, 16, 24, 32), stem_width=8)
    if not name.startswith("ienet"):
        args["num_members"] = 2
    model = selfens_core.create(name, **args).eval()
    assert model(torch.zeros(2, 1, 28, 28)).shape[1:] == (2, 10)
    assert model.pretrained_cfg["build_args"]["small_images"] is True  # rebuilt the same way when loaded


class _VitPlugin:
    """A third-party adapter that can split a family but not adapt it to small images."""

    @selfens_core.hookimpl
    def register_backbone_adapters(self, register):
        register("vit", BackboneAdapter("vit", lambda m: type(m).__name__ == "VisionTransformer", split=None))


def test_an_adapter_without_the_option_says_so(register_plugin):
    register_plugin(_VitPlugin(), "vit-adapter")
    with pytest.raises(BackboneError, match="'vit' backbone adapter does not support small_images"):
        create_backbone("vit_tiny_patch16_224", num_classes=10, in_chans=1, small_images=True)
    with pytest.raises(BackboneError, match="has no backbone adapter; supported families: efficientnet, resnet, vit"):
        create_backbone("convnext_atto", num_classes=10, in_chans=1, small_images=True)
