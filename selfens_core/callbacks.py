"""Callbacks: code that sees the run at fixed points of the training lifecycle.

A callback is any object with some of the methods of :class:`Callback`; the engine calls them in this order:
``on_train_start`` (every time a process starts training, fresh or resumed: ``state.resumed`` says which),
``on_phase_start`` (when a phase begins; not again when a run resumes in the middle of it), then per step
``on_step_end`` and per epoch ``on_epoch_end``, and ``on_phase_end`` after a phase's last epoch (before its
checkpoint is written). Besides the callbacks a run config lists (``callbacks:``, registered with the
``register_callbacks`` hook), the model, its combiner, the distiller and the sampler are called too when they define
these methods, so a component can act on its own lifecycle (a combiner that initialises itself from trained members
when its phase starts).

Whatever a callback decides that must survive a resume belongs in the model's state dict (buffers), never in Python
attributes: a resumed run rebuilds every callback from its config.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class PhaseInfo:
    """One phase of a run, as callbacks see it."""

    index: int
    name: str
    epochs: int
    first_epoch: int  # global 0-based epoch at which the phase starts
    trains: list[str]  # the names of the model parameters this phase trains
    schedule: Any  # the phase's schedule object (``minima(total_steps, steps_per_epoch)`` where it has cycles)
    warmup_steps: int = 0  # the linear warm-up's steps at the phase's start, before ``schedule``


@dataclass
class TrainState:
    """The run at the moment of a callback: model, optimizers, phase and position."""

    model: torch.nn.Module
    phase: PhaseInfo
    steps_per_epoch: int
    out: Path
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    epoch: int = 0  # global, 0-based: the epoch running (or just finished, at on_epoch_end / on_phase_end)
    step: int = 0  # optimizer steps done in the whole run
    resumed: bool = False

    @property
    def phase_steps(self) -> int:
        """Optimizer steps in the current phase."""
        return self.phase.epochs * self.steps_per_epoch

    @property
    def phase_step(self) -> int:
        """Optimizer steps done in the current phase."""
        return self.step - self.phase.first_epoch * self.steps_per_epoch

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group of the first optimizer (nan before optimizers exist)."""
        return self.optimizers[0].param_groups[0]["lr"] if self.optimizers else float("nan")


class Callback:
    """Base class with every event as a documented no-op; subclass it or define the methods on any object."""

    def on_train_start(self, state: TrainState) -> None:
        """Training (re)starts in this process, before the first step it runs."""

    def on_phase_start(self, state: TrainState) -> None:
        """A phase begins: its parameters are selected, its optimizers exist, no step of it has run."""

    def on_step_end(self, state: TrainState) -> None:
        """An optimizer step (and the schedule's step) is done; ``state.step`` counts it. A step checkpoint
        (``train.checkpoint_every_steps``) is written after this event, so what a callback writes into the model is
        saved."""

    def on_epoch_end(self, state: TrainState) -> None:
        """An epoch's steps are done, before its evaluation and checkpoint."""

    def on_phase_end(self, state: TrainState) -> None:
        """A phase's last epoch is done, before its checkpoint (so what a callback writes into the model is saved)."""


def notify(listeners: Iterable[Any], event: str, state: TrainState) -> None:
    """Call ``event`` on every listener that defines it, in order."""
    for listener in listeners:
        method = getattr(listener, event, None)
        if method is not None:
            method(state)
