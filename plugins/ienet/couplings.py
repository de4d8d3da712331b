"""Which layers' channels are coupled, found from the traced graph (torch.fx), never listed by hand per family.

A sub-network keeps a subset of the channels of every *channel space*: the output channels of a convolution and
everything that is elementwise-tied to them. Two tensors whose channels meet in an elementwise op (a residual add,
an SE gate), a depthwise conv's input and output, and a BatchNorm's input and output are one space and must use one
index list; a concatenation along channels is a space made of its parts (its index list is the parts' lists,
offset). The analysis traces each part of the backbone (stem, every block, neck) with the convolutions, linears and
BatchNorms as leaves, follows the channel space of every tensor through the graph, and merges spaces with
union-find. It knows a closed list of channel-preserving ops; anything else that touches a tensor with channels
(a channel split or shuffle, a reduction over channels, a GroupNorm, a channel-wise parameter) is an error naming
the layer, so a backbone is either understood or refused, never sliced wrongly.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from selfens_core.backbones import BackboneError, BackboneParts

ELEMENTWISE_MODULES = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Dropout, nn.Dropout2d,
)
SPATIAL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
ELEMENTWISE_CALLS = {
    F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu, F.mish,
    F.softplus, F.hardtanh, F.dropout, torch.relu, torch.sigmoid, torch.tanh, torch.clamp, operator.neg,
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "clamp_min_",
    "hardtanh_", "contiguous", "float", "type_as",
}
SPATIAL_CALLS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.pad, F.interpolate}
BINARY_CALLS = {
    operator.add, operator.mul, operator.sub, operator.truediv, operator.iadd, operator.imul, torch.add, torch.mul,
    torch.sub, torch.div, "add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_",
}
RESHAPE_CALLS = {torch.flatten, "flatten", "view", "reshape", "squeeze", "unsqueeze"}
REDUCE_CALLS = {torch.mean, "mean", "sum", "amax"}


@dataclass(eq=False)
class Space:
    """A channel dimension of ``size`` channels. ``sliced`` is False for dimensions no sub-network may cut (the
    image channels, the class logits); a concatenation space lists its ``parts``."""

    size: int
    sliced: bool = True
    parts: tuple[Space, ...] = ()
    parent: Space | None = field(default=None, repr=False)


@dataclass
class Layer:
    """A layer with weights and the channel spaces of its input and output (equal for BatchNorm, depthwise conv)."""

    name: str
    module: nn.Module
    input: Space
    output: Space


@dataclass
class Couplings:
    """The result of the analysis: every layer with weights, and which blocks may be skipped (identity residual)."""

    layers: list[Layer]
    skippable: list[list[bool]]  # per stage, per block: input and output are one space of the same shape

    def root(self, space: Space) -> Space:
        return _find(space)

    def spaces(self) -> list[Space]:
        """The distinct root spaces, in order of first use."""
        seen: dict[int, Space] = {}
        for layer in self.layers:
            for space in (layer.input, layer.output):
                for s in _flatten(_find(space)):
                    seen.setdefault(id(s), s)
        return list(seen.values())


def _find(space: Space) -> Space:
    while space.parent is not None:
        space = space.parent
    return space


def _flatten(space: Space) -> list[Space]:
    """A root and, for a concatenation, the roots of its parts (recursively)."""
    return [space, *(s for part in space.parts for s in _flatten(_find(part)))]


def _unify(a: Space, b: Space, where: str) -> Space:
    a, b = _find(a), _find(b)
    if a is b:
        return a
    if a.size != b.size:
        raise BackboneError(f"{where}: couples {a.size} channels with {b.size} channels")
    if a.parts and b.parts:
        if [p.size for p in a.parts] != [p.size for p in b.parts]:
            raise BackboneError(f"{where}: couples two channel concatenations of different layouts")
        for pa, pb in zip(a.parts, b.parts):
            _unify(pa, pb, where)
    elif a.parts or b.parts:  # keep the concatenation as the root, the plain space follows it
        a, b = (a, b) if a.parts else (b, a)
        if not b.sliced:
            raise BackboneError(f"{where}: couples a channel concatenation with channels that cannot be cut")
    a.sliced = a.sliced and b.sliced
    b.parent = a
    return a


class _Tracer(fx.Tracer):
    """Stops at the layers with weights (they are replaced by sliced versions) and at torch.nn's own modules."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, _BatchNorm)) or super().is_leaf_module(m, qualname)


class _Analysis:
    """Follows channel spaces through one traced part after another, sharing one union-find."""

    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self._seen: dict[int, Layer] = {}

    def trace(self, name: str, module: nn.Module, space: Space, x: torch.Tensor) -> tuple[Space, torch.Tensor]:
        """The output space and output of ``module`` on ``x`` whose channels are ``space``."""
        tracer = _Tracer()
        leaf = tracer.is_leaf_module(module, "")
        root = nn.Sequential(module) if leaf else module  # fx traces into the root: wrap a lone layer
        try:
            gm = fx.GraphModule(root, tracer.trace(root))
        except Exception as error:  # fx raises many error types for untraceable code
            raise BackboneError(f"{name}: cannot be traced by torch.fx to find its channel couplings "
                                f"({type(error).__name__}: {error})") from None
        out = ShapeProp(gm).propagate(x)
        env: dict[fx.Node, Space | None] = {}
        out_space = None
        for node in gm.graph.nodes:
            where = f"layer '{name}'" if leaf else _where(name, node)
            if node.op == "placeholder":
                env[node] = space
            elif node.op == "output":
                out_space = env[node.args[0]]
            else:
                env[node] = self._node(gm, node, env, where)
        if out_space is None or not isinstance(out, torch.Tensor):
            raise BackboneError(f"{name}: must return one tensor of feature maps")
        return out_space, out

    def _node(self, gm: fx.GraphModule, node: fx.Node, env: dict, where: str) -> Space | None:
        inputs = [a for a in node.all_input_nodes if env.get(a) is not None]
        if "tensor_meta" not in node.meta or node.op == "get_attr":
            return None  # sizes, shapes and constants carry no channels
        if node.op == "call_module":
            return self._module(gm.get_submodule(node.target), node, env, where)
        target = node.target
        if target in BINARY_CALLS:
            return self._binary(node, env, where)
        if not inputs:
            return None
        src = inputs[0]
        space = env[src]
        if target in ELEMENTWISE_CALLS and len(inputs) == 1:
            return space
        if target in SPATIAL_CALLS | REDUCE_CALLS | RESHAPE_CALLS and len(inputs) == 1:
            if target in REDUCE_CALLS and not _keeps_channel_dim(node):
                raise BackboneError(f"{where}: {_op(node)} reduces over channels")
            if _same_channels(src, node):
                return space
        if target is torch.cat:
            return self._cat(node, env, where)
        raise BackboneError(f"{where}: cannot tell how {_op(node)} treats channels; IENet slices only backbones "
                            f"whose ops are convolutions, BatchNorm, linear, elementwise and spatial ops, residual "
                            f"adds and channel concatenations")

    def _module(self, m: nn.Module, node: fx.Node, env: dict, where: str) -> Space | None:
        space = env[node.args[0]]
        if space is None:
            return None
        if isinstance(m, nn.Conv2d):
            return self._conv(m, space, where)
        if isinstance(m, _BatchNorm):
            _check_batchnorm(m, where)
            self.record(where, m, space, space)
            return space
        if isinstance(m, nn.Linear):
            if type(m).forward is not nn.Linear.forward or len(node.args[0].meta["tensor_meta"].shape) != 2:
                raise BackboneError(f"{where}: linear layers are supported on (batch, features) inputs only")
            out = Space(m.out_features)
            self.record(where, m, space, out)
            return out
        if isinstance(m, ELEMENTWISE_MODULES):
            return space
        if isinstance(m, (*SPATIAL_MODULES, nn.Flatten)) and _same_channels(node.args[0], node):
            return space
        raise BackboneError(f"{where}: layer of type {type(m).__name__} is not supported by IENet channel slicing")

    def _conv(self, m: nn.Conv2d, space: Space, where: str) -> Space:
        if type(m).forward is not nn.Conv2d.forward or m.padding_mode != "zeros":
            raise BackboneError(f"{where}: {type(m).__name__} (padding mode {m.padding_mode!r}) is not a plain "
                                f"Conv2d; only those can be sliced")
        if m.groups == 1:
            out = Space(m.out_channels)
        elif m.groups == m.in_channels == m.out_channels:  # depthwise: its groups follow the kept channels
            out = space
        else:
            raise BackboneError(f"{where}: grouped convolution (groups={m.groups}, {m.in_channels}→"
                                f"{m.out_channels} channels) cannot be sliced; only groups=1 or depthwise")
        self.record(where, m, space, out)
        return out

    def _binary(self, node: fx.Node, env: dict, where: str) -> Space | None:
        spaces = []
        for arg in node.args:
            if isinstance(arg, fx.Node) and "tensor_meta" in arg.meta:
                if env.get(arg) is not None:
                    spaces.append(env[arg])
                elif math.prod(arg.meta["tensor_meta"].shape) > 1:
                    raise BackboneError(f"{where}: {_op(node)} with a constant or parameter tensor of shape "
                                        f"{tuple(arg.meta['tensor_meta'].shape)}: channel-wise constants cannot be "
                                        f"sliced")
        if not spaces:
            return None
        for other in spaces[1:]:
            _unify(spaces[0], other, where)
        return _find(spaces[0])

    def _cat(self, node: fx.Node, env: dict, where: str) -> Space:
        tensors = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        ndim = len(node.meta["tensor_meta"].shape)
        parts = [env.get(t) for t in tensors]
        if any(p is None for p in parts):
            raise BackboneError(f"{where}: concatenates feature maps with constants")
        if dim % ndim == 1:
            return Space(sum(_find(p).size for p in parts), parts=tuple(parts))
        for other in parts[1:]:
            _unify(parts[0], other, where)
        return _find(parts[0])

    def record(self, where: str, module: nn.Module, input: Space, output: Space) -> None:
        known = self._seen.get(id(module))
        if known is not None:  # a module called twice must see the same spaces both times
            _unify(known.input, input, where)
            _unify(known.output, output, where)
            return
        layer = Layer(where, module, input, output)
        self._seen[id(module)] = layer
        self.layers.append(layer)


def _check_batchnorm(m: _BatchNorm, where: str) -> None:
    """A plain BatchNorm, or a BatchNorm followed by its own parameter-free dropout and activation (timm's
    ``BatchNormAct2d``), which the sliced layer reproduces."""
    children = dict(m.named_children())
    plain = type(m).forward is nn.BatchNorm2d.forward and not children
    fused = set(children) == {"drop", "act"} and all(isinstance(c, ELEMENTWISE_MODULES) for c in children.values())
    if not isinstance(m, nn.BatchNorm2d) or not (plain or fused):
        raise BackboneError(f"{where}: {type(m).__name__} is not a BatchNorm IENet can switch per sub-network")
    if not m.affine or not m.track_running_stats:
        raise BackboneError(f"{where}: BatchNorm without affine parameters or running statistics is not supported")


def _where(part: str, node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    if node.op == "call_module":
        path = node.target
    return f"layer '{part}{'.' + path if path else ''}'"


def _op(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target!r}"


def _same_channels(src: fx.Node, node: fx.Node) -> bool:
    """Batch and channel dimensions unchanged and the rest only reshaped or resized: channel c stays channel c."""
    a, b = src.meta["tensor_meta"].shape, node.meta["tensor_meta"].shape
    return len(a) >= 2 and len(b) >= 2 and tuple(a[:2]) == tuple(b[:2])


def _keeps_channel_dim(node: fx.Node) -> bool:
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if dims is None:
        return False
    ndim = len(node.args[0].meta["tensor_meta"].shape)
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    return all(d % ndim not in (0, 1) for d in dims)


@torch.no_grad()
def find_couplings(parts: BackboneParts, in_chans: int, num_classes: int, size: int = 32) -> Couplings:
    """Trace stem, each block of each stage, and neck on a ``size``×``size`` example; then pool and classifier."""
    modules = [parts.stem, *parts.stages, parts.neck, parts.classifier]
    modes = [m.training for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        analysis = _Analysis()
        x = torch.zeros(2, in_chans, size, size)
        space, x = analysis.trace("stem", parts.stem, Space(in_chans, sliced=False), x)
        skippable = []
        for i, stage in enumerate(parts.stages):
            blocks = list(stage) if isinstance(stage, nn.Sequential) else [stage]
            skippable.append([])
            for j, block in enumerate(blocks):
                out_space, y = analysis.trace(f"stages.{i}.{j}", block, space, x)
                skippable[-1].append(_find(out_space) is _find(space) and y.shape == x.shape)
                space, x = out_space, y
        space, x = analysis.trace("neck", parts.neck, space, x)
        if x.ndim != 4:
            raise BackboneError(f"neck: must return feature maps (B, C, H, W), got shape {tuple(x.shape)}")
        analysis.record("layer 'classifier'", parts.classifier, space, Space(num_classes, sliced=False))
    finally:
        for m, mode in zip((m for module in modules for m in module.modules()), modes):
            m.training = mode
    return Couplings(analysis.layers, skippable)
