"""The ``snapshot`` callback: fill a ``snapshots-<timm>`` model's slots with snapshots of its trained member.

Snapshot ensembles (Huang et al. 2017) take a snapshot at the end of each cosine-restart cycle; fast geometric
ensembling (Garipov et al. 2018) at the middle of each cycle of a triangular schedule, where the learning rate is
lowest. Both are the phase schedule's ``minima`` (``cosine_restarts``, ``cyclic``); ``every_epochs`` takes them at
fixed epochs instead.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selfens_core.optim import schedule_minima


class Snapshot:
    """Copy the trained (last) member into the next free slot at each snapshot point of a phase.

    The points are the phase schedule's minima, or every ``every_epochs`` epochs of the phase when given. Snapshots
    are taken in the phases that train the live member (and, for minima, whose schedule has them), or in the phases
    named in ``phases``. A point at a phase's last step that finds no free slot left takes nothing: the live member
    is that snapshot (K members hold K - 1 snapshots and the live one, so K cosine-restart cycles fill a model of K
    members). More points than that are an error when the phase starts.

    The number of snapshots taken is the model's ``snapshots_taken`` buffer, so a resumed run continues with it.
    """

    def __init__(self, every_epochs: int | None = None, phases: Sequence[str] | None = None):
        if every_epochs is not None and (isinstance(every_epochs, bool) or not isinstance(every_epochs, int)
                                         or every_epochs < 1):
            raise ValueError(f"every_epochs must be an int >= 1 (or null: the schedule's minima), got {every_epochs!r}")
        self.every_epochs = every_epochs
        self.phases = None if phases is None else list(phases)
        self._points: dict[int, list[int]] = {}  # per phase index; derived from the config, recomputed on resume

    def on_train_start(self, state: Any) -> None:
        if not hasattr(state.model, "take_snapshot"):
            raise TypeError(f"the snapshot callback fills the slots of a snapshots-<timm model> model, not a "
                            f"{type(state.model).__name__}")

    def on_phase_start(self, state: Any) -> None:
        """Check before the phase's first step that its snapshots fit into the free slots."""
        points = self._phase_points(state)
        copies = len(points)
        if points and points[-1] == state.phase_steps and copies > state.model.free_slots:
            copies -= 1  # the live member at the phase's end is the last snapshot
        if copies > state.model.free_slots:
            raise ValueError(
                f"snapshot: phase {state.phase.name!r} has {len(points)} snapshot points but the model has "
                f"{state.model.free_slots} free slot(s) ({state.model.num_members} members: "
                f"{int(state.model.snapshots_taken)} snapshot(s) taken, the last member is the trained one); build it "
                f"with num_members={int(state.model.snapshots_taken) + copies + 1} or take fewer snapshots")

    def on_step_end(self, state: Any) -> None:
        if state.phase_step not in self._phase_points(state):
            return
        if state.model.free_slots == 0 and state.phase_step == state.phase_steps:
            return  # the live member is the last snapshot
        state.model.take_snapshot()

    def _phase_points(self, state: Any) -> list[int]:
        """The steps of the current phase (counts of steps done, 1-based) after which to take a snapshot."""
        index = state.phase.index
        if index not in self._points:
            self._points[index] = self._compute_points(state)
        return self._points[index]

    def _compute_points(self, state: Any) -> list[int]:
        phase, named = state.phase, self.phases is not None
        if named and phase.name not in self.phases:
            return []
        if not named and not set(state.model.parameter_groups()["live"]) & set(phase.trains):
            return []  # the live member does not train in this phase: nothing new to snapshot
        if self.every_epochs is not None:
            step = self.every_epochs * state.steps_per_epoch
            return list(range(step, state.phase_steps + 1, step))
        if getattr(phase.schedule, "minima", None) is None:
            if named:
                raise ValueError(f"snapshot: phase {phase.name!r}'s schedule ({type(phase.schedule).__name__}) has no "
                                 "minima; use cyclic or cosine_restarts there, or every_epochs")
            return []
        return sorted(schedule_minima(phase.schedule, total_steps=state.phase_steps,
                                      steps_per_epoch=state.steps_per_epoch, warmup_steps=phase.warmup_steps))
