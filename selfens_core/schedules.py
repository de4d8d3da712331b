"""Learning-rate schedules: the multiplier of the base learning rate as a pure function of the step.

A schedule is an object (registered by class with the ``register_schedules`` hook, built as ``cls(**args)``) whose
``__call__(step, total_steps, steps_per_epoch)`` gives the multiplier at 0-based ``step`` of a phase of
``total_steps`` steps. Being a pure function of the step, a resumed ``LambdaLR`` (which stores only the step count)
continues exactly. A cyclic schedule may also have ``minima(total_steps, steps_per_epoch)``: the counts of steps done
(after optimizer step number ``s``) at which a cycle reaches its minimum, where snapshots of the model are taken.
Linear warm-up before any schedule is :func:`selfens_core.optim.lr_lambda`'s.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol


class Schedule(Protocol):
    """The multiplier of the base learning rate at 0-based ``step`` of ``total_steps``."""

    def __call__(self, step: int, total_steps: int, steps_per_epoch: int) -> float: ...


def _progress(step: int, total_steps: int) -> float:
    """The fraction of the phase done before ``step``, at most 1."""
    return min(step / max(1, total_steps), 1.0)


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, not {value!r}")
    return float(value)


def _cycle_steps(cycle_epochs: float, steps_per_epoch: int) -> int:
    """The steps of one cycle; a cycle needs two, so that it has a low and a high point."""
    steps = round(cycle_epochs * steps_per_epoch)
    if steps < 2:
        raise ValueError(f"cycle_epochs={cycle_epochs} is {steps} step(s) at {steps_per_epoch} steps per epoch; a "
                         "cycle needs at least 2 steps")
    return steps


class Constant:
    """The base learning rate throughout."""

    def __call__(self, step: int, total_steps: int, steps_per_epoch: int) -> float:
        return 1.0


class Cosine:
    """Half a cosine from 1 to 0 over the phase."""

    def __call__(self, step: int, total_steps: int, steps_per_epoch: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * _progress(step, total_steps)))


class Step:
    """``gamma`` to the power of the milestones passed; milestones are fractions of the phase (0.5: half-way)."""

    def __init__(self, *, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1):
        if not all(isinstance(m, (int, float)) and 0.0 <= m <= 1.0 for m in milestones):
            raise ValueError(f"milestones must be fractions of training in [0, 1], e.g. [0.5, 0.75], not "
                             f"{list(milestones)!r}")
        self.milestones, self.gamma = list(milestones), _positive("gamma", gamma)

    def __call__(self, step: int, total_steps: int, steps_per_epoch: int) -> float:
        progress = _progress(step, total_steps)
        return self.gamma ** sum(progress >= m for m in self.milestones)


class PiecewiseLinear:
    """Linear between ``points``, pairs ``[fraction of the phase, factor]`` from fraction 0 to fraction 1.

    The default: constant to 50%, linear down to 0.01× by 90%, then constant."""

    def __init__(self, *, points: Sequence[Sequence[float]] = ((0.0, 1.0), (0.5, 1.0), (0.9, 0.01), (1.0, 0.01))):
        pairs = [tuple(p) for p in points]
        if len(pairs) < 2 or any(len(p) != 2 for p in pairs):
            raise ValueError(f"points must be at least two [fraction, factor] pairs, not {points!r}")
        fractions, factors = zip(*pairs)
        if fractions[0] != 0 or fractions[-1] != 1 or any(a >= b for a, b in zip(fractions, fractions[1:])):
            raise ValueError(f"points' fractions must start at 0, end at 1 and increase, not {list(fractions)}")
        if not all(math.isfinite(f) and f >= 0 for f in factors):
            raise ValueError(f"points' factors must be finite numbers >= 0, not {list(factors)}")
        self.points = [(float(x), float(y)) for x, y in pairs]

    def __call__(self, step: int, total_steps: int, steps_per_epoch: int) -> float:
        progress = _progress(step, total_steps)
        for (x0, y0), (x1, y1) in zip(self.points, self.points[1:]):
            if progress <= x1:
                return y0 + (progress - x0) / (x1 - x0) * (y1 - y0)
        return self.points[-1][1]


class Cyclic:
    """Fast geometric ensembling's triangular cycle per step (Garipov et al. 2018): within each cycle of ``c =
    cycle_epochs × steps_per_epoch`` steps, ``t = (step mod c + 1) / c`` and the factor goes linearly from ``high``
    down to ``low`` at ``t = 1/2`` and back up to ``high`` at ``t = 1``. Its minima are the cycles' middles."""

    def __init__(self, *, cycle_epochs: float = 2, low: float = 0.01, high: float = 1.0):
        self.cycle_epochs, self.high = _positive("cycle_epochs", cycle_epochs), _positive("high", high)
        if not (isinstance(low, (int, float)) and 0 <= low <= high):
            raise ValueError(f"low must be a number in [0, high={high}], not {low!r}")
        self.low = float(low)

    def __call__(self, step: int, total_steps: int, steps_per_epoch: int) -> float:
        cycle = _cycle_steps(self.cycle_epochs, steps_per_epoch)
        t = (step % cycle + 1) / cycle
        if t <= 0.5:
            return (1 - 2 * t) * self.high + 2 * t * self.low
        return (2 - 2 * t) * self.low + (2 * t - 1) * self.high

    def minima(self, total_steps: int, steps_per_epoch: int) -> list[int]:
        """After the step at ``t = 1/2`` of each cycle (for an odd cycle, the later of its two lowest steps)."""
        cycle = _cycle_steps(self.cycle_epochs, steps_per_epoch)
        return list(range((cycle + 1) // 2, total_steps + 1, cycle))


class CosineRestarts:
    """Cosine annealing with warm restarts (SGDR; snapshot ensembles, Huang et al. 2017): within each cycle of
    ``cycle_epochs`` epochs the factor follows a cosine from 1 towards 0, then restarts at 1. Its minima are the
    cycles' ends."""

    def __init__(self, *, cycle_epochs: float):
        self.cycle_epochs = _positive("cycle_epochs", cycle_epochs)

    def __call__(self, step: int, total_steps: int, steps_per_epoch: int) -> float:
        cycle = _cycle_steps(self.cycle_epochs, steps_per_epoch)
        return 0.5 * (1 + math.cos(math.pi * (step % cycle) / cycle))

    def minima(self, total_steps: int, steps_per_epoch: int) -> list[int]:
        """After the last step of each complete cycle."""
        cycle = _cycle_steps(self.cycle_epochs, steps_per_epoch)
        return list(range(cycle, total_steps + 1, cycle))


BUILTIN_SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": Constant, "cosine": Cosine, "step": Step, "piecewise_linear": PiecewiseLinear, "cyclic": Cyclic,
    "cosine_restarts": CosineRestarts,
}

