"""Which channels each sub-network keeps: random cut, random offset, shuffle channel or slimmable (IENet, Sec. 4.1).

Indices are drawn once, at construction, from torch's global generator (the engine seeds it with ``train.seed``)
and kept as buffers, so a saved and reloaded model has the same sub-networks, and switchable BatchNorm statistics
always refer to the same channels.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .couplings import Couplings, Space

SELECTIONS = {
    "rc": "random cut: drop one contiguous block of (1-w)·c channels at a random place, keep the rest",
    "ro": "random offset: keep a window of w·c consecutive channels at a random offset",
    "sc": "shuffle channel: a random subset of w·c channels, in shuffled order",
    "slimmable": "the first w·c channels (slimmable networks; the paper's baseline)",
}


def kept_channels(channels: int, width: float) -> int:
    """How many of ``channels`` a sub-network of width ratio ``width`` keeps (at least one)."""
    return max(1, round(width * channels))


def draw_indices(selection: str, channels: int, width: float) -> torch.Tensor:
    """The kept channel indices (int64) of one sub-network in one channel space."""
    keep = kept_channels(channels, width)
    if selection == "slimmable":
        return torch.arange(keep)
    if selection == "rc":
        start = int(torch.randint(0, keep + 1, ()))
        return torch.cat([torch.arange(start), torch.arange(start + channels - keep, channels)])
    if selection == "ro":
        start = int(torch.randint(0, channels - keep + 1, ()))
        return torch.arange(start, start + keep)
    if selection == "sc":
        return torch.randperm(channels)[:keep].clone()  # its own storage, as safetensors requires
    raise ValueError(f"unknown channel selection {selection!r}; choose one of {', '.join(SELECTIONS)}")


class ChannelIndices(nn.Module):
    """The kept channels of every sub-network in every channel space, as buffers ``space{k}_member{n}``.

    Spaces that no sub-network may cut (image channels, class logits) have no buffers; a concatenation space is the
    concatenation of its parts' indices, offset by the parts' sizes. :meth:`use` selects the sub-network whose
    indices :meth:`index` returns; the sliced layers hold this module through :class:`Switch`.
    """

    def __init__(self, couplings: Couplings, widths: Sequence[float], selection: str):
        super().__init__()
        if selection not in SELECTIONS:
            raise ValueError(f"unknown channel selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
        spaces = couplings.spaces()
        self._ids = {id(space): k for k, space in enumerate(spaces)}
        self._sizes = [space.size for space in spaces]
        self._sliced = [space.sliced and not space.parts for space in spaces]
        self._parts = [[self.key(couplings.root(p)) for p in space.parts] for space in spaces]
        for k, space in enumerate(spaces):
            if self._sliced[k]:
                for n, width in enumerate(widths):
                    self.register_buffer(f"space{k}_member{n}", draw_indices(selection, space.size, width))
        self.member: int | None = None

    def key(self, space: Space) -> int:
        """The id of a root space (as returned by ``Couplings.root``)."""
        return self._ids[id(space)]

    @contextlib.contextmanager
    def use(self, member: int) -> Iterator[None]:
        """Run the sliced layers as sub-network ``member`` inside this block."""
        self.member = member
        try:
            yield
        finally:
            self.member = None

    def index(self, key: int, member: int | None = None) -> torch.Tensor | None:
        """Kept channels of space ``key`` for ``member`` (default: the one in :meth:`use`); ``None``: all channels."""
        member = self.member if member is None else member
        if member is None:
            raise RuntimeError("no sub-network selected: run the sliced layers inside ChannelIndices.use(member)")
        if self._parts[key]:
            pieces, offset = [], 0
            for part in self._parts[key]:
                idx = self.index(part, member)
                pieces.append(offset + (idx if idx is not None else torch.arange(self._sizes[part],
                                                                                  device=self._device())))
                offset += self._sizes[part]
            return torch.cat(pieces)
        if not self._sliced[key]:
            return None
        return getattr(self, f"space{key}_member{member}")

    def _device(self) -> torch.device:
        return next(self.buffers()).device
