"""IENet models: ``ienet-mobilenetv2`` (the paper's base network) and ``ienet-<timm name>`` for timm CNNs."""
from __future__ import annotations

from collections.abc import Sequence

from selfens_core.factory import backbone_parts, create_backbone

from .model import IntraEnsemble

PAPER_WIDTHS = (0.9, 0.9, 0.9, 1.0)  # IENet-B, CIFAR (Sec. 5.1): three 0.9 sub-networks and the full network


def member_widths(widths: Sequence[float] | None, num_members: int | None) -> list[float]:
    """The width ratios: ``widths`` as given, or for ``num_members`` alone the paper's pattern (N−1 sub-networks of
    0.9 and the full network last; ``num_members=1`` is the full network alone, the stand-alone baseline)."""
    if widths is None:
        return list(PAPER_WIDTHS) if num_members is None else [0.9] * (num_members - 1) + [1.0]
    if num_members is not None and num_members != len(widths):
        raise ValueError(f"num_members={num_members} disagrees with widths={list(widths)}; give one of them")
    return list(widths)


def ienet_mobilenetv2(*, num_classes: int, in_chans: int = 3, widths: Sequence[float] | None = None,
                      num_members: int | None = None, selection: str = "rc", depth: bool = False) -> IntraEnsemble:
    """The paper's IENet on MobileNetV2 1.0x for small images: 4 sub-networks of widths 0.9, 0.9, 0.9, 1.0 (RC).
    The paper's "modified MobileNet V2 1.0x" is not specified; ours is timm's with ``small_images`` (the stem and the
    24-channel stage at stride 1: total stride 8)."""
    net = create_backbone("mobilenetv2_100", num_classes=num_classes, in_chans=in_chans, small_images=True)
    parts = backbone_parts(net, "mobilenetv2_100")
    return IntraEnsemble(parts, widths=member_widths(widths, num_members), selection=selection, depth=depth,
                         num_classes=num_classes, in_chans=in_chans, min_input_size=8)


def ienet_timm(backbone: str, *, num_classes: int, in_chans: int = 3, widths: Sequence[float] | None = None,
               num_members: int | None = None, selection: str = "rc", depth: bool = False,
               small_images: bool = False, **timm_kwargs) -> IntraEnsemble:
    """IENet on any timm CNN with a backbone adapter (ResNet, EfficientNet/MobileNetV2 families) whose channel
    couplings the graph analysis resolves; ``small_images`` adapts it to 28×28 / 32×32 inputs
    (``selfens_core.factory.create_backbone``); ``timm_kwargs`` go to ``timm.create_model``."""
    net = create_backbone(backbone, num_classes=num_classes, in_chans=in_chans, small_images=small_images,
                          **timm_kwargs)
    return IntraEnsemble(backbone_parts(net, backbone), widths=member_widths(widths, num_members),
                         selection=selection, depth=depth, num_classes=num_classes, in_chans=in_chans,
                         min_input_size=16)
