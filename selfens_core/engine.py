"""The one training loop every method runs through.

A run is a sequence of phases (:mod:`.phases`; one by default), each training its selection of parameters with its
own optimizers and schedule. Per step: the sampler plans passes (which inputs through which members), the model
returns member logits (M, B, C), the distiller turns them into named loss terms, a combiner with trainable
parameters adds its own loss on detached outputs; gradients accumulate over the passes, then one optimizer step.
Callbacks and components see the run at fixed points (:mod:`.callbacks`), and may look at training data once before
any optimizer exists (``prepare``). Methods plug in through those components and never through this file. What may
be written into the run directory, and by whom, is :mod:`.rundir`'s business.
"""
from __future__ import annotations

import contextlib
import errno
import json
import shutil
import time
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .batchnorm import precise_bn
from .callbacks import PhaseInfo, TrainState, notify
from .checkpoint import (
    checkpoint_order,
    clean_interrupted_saves,
    latest_checkpoint,
    load_checkpoint,
    read_extra_state,
    save_checkpoint,
)
from .config import ConfigError, RunConfig, save_config
from .data import iterate_batches
from .distributed import (
    World,
    average_batchnorm_statistics,
    average_gradients,
    broadcast_state,
    from_main,
    joined,
    mean_over_ranks,
    quiet_unless_main,
)
from .ensemble import NonFiniteInputError
from .evaluation import evaluate
from .factory import (
    build_optimizer,
)
from .init_from import copy_weights_from
from .optim import lr_lambda, weight_decay_groups
from .phases import OptimizerSet, Phase, ScheduleSet, apply_phase, release, select
from .pretrained import save_pretrained
from .rundir import (
    CHECKPOINTS_DIR,
    CONFIG_YAML,
    EPOCH_LOG,
    METRICS_FILE,
    RESUME_LOG,
    ConfigChanged,
    check_resume_config,
    check_target,
    clear_run,
    locked,
    record_resume,
    resumes_that_changed_the_result,
    trained_config,
    truncate_epoch_log,
)
from .samplers import Pass, plan_passes
from .setup import Setup, build, phase_schedule, pick_device, resolve_recipe

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # train.precision that runs under autocast
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the run stopped and its last good checkpoint was kept."""


class OutOfDiskSpace(RuntimeError):
    """The disk of the run directory filled up; the last complete checkpoint is intact, so the run can resume."""


@dataclass
class PhaseRun:
    """A phase being trained: its optimizers, schedule and what it freezes."""

    phase: Phase
    optimizer: OptimizerSet
    scheduler: ScheduleSet
    held: list[torch.nn.Module]  # modules held in evaluation mode
    members_train: bool  # some parameter other than the combiner's trains
    combiner_trains: bool
    scaler: torch.amp.GradScaler  # fp16's loss scale; disabled (a no-op) otherwise


@dataclass
class EpochProgress:
    """How far an epoch has trained: what a step checkpoint records, so that a resume continues the epoch exactly
    (its batches and the sampler's draws are replayed from ``(train.seed, epoch)``, see :func:`_epoch_batches`)."""

    step: int = 0  # steps done in the epoch
    sums: dict[str, float] = field(default_factory=dict)  # each loss term summed over those steps (this rank's)
    seconds: float = 0.0  # the time they took

    def record(self, world: World) -> dict[str, Any]:
        """The checkpoint's ``extra_state`` entries (JSON floats read back bit-exact); the loss sums are the mean
        over ranks, which every rank resumes from (the mean over ranks of what they add to it is the epoch's)."""
        return {"step": self.step, "loss_sums": mean_over_ranks(self.sums, world), "seconds": self.seconds}

    @classmethod
    def from_record(cls, extra_state: dict[str, Any]) -> EpochProgress:
        """Read back :meth:`record`; an epoch checkpoint's state, which has none of it, is an epoch not begun."""
        return cls(extra_state.get("step", 0), extra_state.get("loss_sums", {}), extra_state.get("seconds", 0.0))


def train(cfg: DictConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          allow_changes: Collection[str] = (), progress: bool = True) -> dict[str, Any]:
    """Train from ``cfg`` into ``out_dir``; returns the final test metrics (also written to ``metrics.json``).

    ``resume`` continues from the newest checkpoint, refusing a config that changes the result unless each changed
    key is in ``allow_changes`` (recorded in ``resumes.jsonl``); ``overwrite`` replaces a run or model already in
    ``out_dir``, which is otherwise never touched. The directory is locked for the whole run (see :mod:`.rundir`).
    Launched by ``torchrun``, each process trains its shard of every batch and rank 0 writes (:mod:`.distributed`).
    """
    out = Path(out_dir)
    with (joined(pick_device(cfg.train.device).type) as world, quiet_unless_main(world),
          locked(out) if world.main else contextlib.nullcontext()):
        if world.main:  # the others wait for its verdict on the directory, then read the same checkpoint
            _tidy_interrupted_saves(out)
        last = from_main(check_target(out, resume=resume, overwrite=overwrite) if world.main else None, world)
        s = build(cfg, world)
        resumed, resumed_at = _check_resume(out, last, s, allow_changes) if last else (None, EpochProgress())
        if not resumed:
            _prepare(s)
            broadcast_state(_ModelAndObjectives(s), world)
        with _resumable_when_disk_full(out):
            if world.main:
                _begin(out, s, resumed, overwrite)
            start = resumed["epoch"] if resumed else 0
            current = s.phase_at(min(start, s.epochs - 1))  # a resumed run's phase: its components are notified
            state = TrainState(s.model, _phase_info(s, current), s.steps_per_epoch,
                               out, step=start * s.steps_per_epoch + resumed_at.step, resumed=bool(resumed))
            notify(s.listeners(current), "on_train_start", state)
            for phase in s.phases:
                first, end = s.first_epoch(phase), s.first_epoch(phase) + phase.epochs
                if end <= start:
                    continue
                state.epoch = max(start, first)
                inside = (first, 0) < (start, resumed_at.step)  # the checkpoint is inside this phase
                run = _start_phase(s, phase, state, resume_from=last if inside else None)
                for epoch in range(max(start, first), end):
                    state.epoch = epoch
                    so_far = resumed_at if epoch == start else EpochProgress()
                    losses = _train_epoch(s, run, state, so_far, progress)
                    notify(s.listeners(phase), "on_epoch_end", state)
                    if epoch + 1 == end:
                        notify(s.listeners(phase), "on_phase_end", state)
                    _log_epoch(s, run, out, epoch, losses, so_far.seconds)
                    _save(out, epoch + 1, s, run)
            # resumed after the last epoch, no phase ran: the last one still says which modules stay frozen
            held = run.held if start < s.epochs else apply_phase(s.model, s.phases[-1])[1]
            release(s.model)
            return _finish(out, s, keep=held)


def _phase_info(s: Setup, phase: Phase, trained: list[str] = (), schedule: Any = None) -> PhaseInfo:
    return PhaseInfo(phase.index, phase.name, phase.epochs, s.first_epoch(phase), list(trained), schedule,
                     _warmup_steps(s, phase))


def _warmup_steps(s: Setup, phase: Phase) -> int:
    return round(phase.warmup_epochs * s.steps_per_epoch)


def _start_phase(s: Setup, phase: Phase, state: TrainState, resume_from: Path | None) -> PhaseRun:
    """Freeze what ``phase`` does not train, build its optimizers and schedule; then either restore them from the
    checkpoint ``resume_from`` (a resume in the middle of the phase) or announce the phase's start to listeners."""
    trained, held = apply_phase(s.model, phase)
    objective = s.phase_distillers.get(phase.index, s.distiller)
    optimizers = []
    for index, spec in enumerate(phase.optimizers):
        names = [n for n in select(s.model, spec.params, f"phases[{phase.index}].optimizers[{index}].params")
                 if n in set(trained)]
        optimizers.append(_optimizer(s, spec, names, objective if index == 0 else None, phase))
    _check_covered(phase, trained, [g["params"] for o in optimizers for g in o.param_groups], s.model)
    optimizer = OptimizerSet(optimizers)
    schedule = phase_schedule(phase)
    total = phase.epochs * s.steps_per_epoch
    multiplier = lr_lambda(schedule, total_steps=total, steps_per_epoch=s.steps_per_epoch,
                           warmup_steps=_warmup_steps(s, phase))
    try:
        scheduler = ScheduleSet(optimizer, multiplier)  # LambdaLR evaluates the first step: a bad cycle shows here
    except ValueError as error:
        raise ConfigError(f"phases[{phase.index}] schedule {phase.schedule!r}: {error}") from None
    combiner_names = set(s.model.parameter_groups()["combiner"])
    run = PhaseRun(phase, optimizer, scheduler, held,
                   members_train=any(n not in combiner_names for n in trained),
                   combiner_trains=any(n in combiner_names for n in trained),
                   scaler=torch.amp.GradScaler(s.device.type, enabled=s.cfg.train.precision == "fp16"))
    state.phase, state.optimizers = _phase_info(s, phase, trained, schedule), optimizer.optimizers
    if resume_from is not None:
        load_checkpoint(resume_from, model=_ModelAndObjectives(s), optimizer=optimizer, scheduler=scheduler)
        if "grad_scaler" in (extra := read_extra_state(resume_from)):
            run.scaler.load_state_dict(extra["grad_scaler"])
    else:
        if len(s.phases) > 1:
            print(f"phase {phase.index + 1}/{len(s.phases)} {phase.name!r}: {phase.epochs} epoch(s), training "
                  f"{len(trained)} of {len(list(s.model.parameters()))} parameter tensors")
        notify(s.listeners(phase), "on_phase_start", state)
    return run


def _optimizer(s: Setup, spec, names: list[str], objective: torch.nn.Module | None, phase: Phase):
    """One optimizer over ``names``: weights with and without weight decay, then the combiner's parameters and the
    objective's (a distiller's discriminators) in groups of their own, with their own ``lr`` attribute if set."""
    params = dict(s.model.named_parameters())
    combiner_names = set(s.model.parameter_groups()["combiner"])
    groups = weight_decay_groups([(n, params[n]) for n in names if n not in combiner_names], spec.weight_decay)
    for owner, own in ((s.model.combiner, [params[n] for n in names if n in combiner_names]),
                       (objective, [p for p in objective.parameters() if p.requires_grad] if objective else [])):
        if own:
            groups.append({"params": own, "weight_decay": 0.0, "lr": getattr(owner, "lr", None) or spec.lr})
    groups = [g for g in groups if g["params"]]
    try:
        return build_optimizer(spec.optimizer, groups, lr=spec.lr, args=spec.args)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"phases[{phase.index}] optimizer {spec.optimizer!r}: {error}") from None


def _check_covered(phase: Phase, trained: list[str], groups: list[list[torch.nn.Parameter]],
                   model: torch.nn.Module) -> None:
    """Every parameter the phase trains is stepped by exactly one of its optimizers."""
    counts: dict[int, int] = {}
    for params in groups:
        for p in params:
            counts[id(p)] = counts.get(id(p), 0) + 1
    named = dict(model.named_parameters())
    missing = [n for n in trained if counts.get(id(named[n]), 0) == 0]
    twice = [n for n in trained if counts.get(id(named[n]), 0) > 1]
    if missing or twice:
        problem = (f"{len(missing)} trained parameter(s) in no optimizer (e.g. {missing[:3]})" if missing
                   else f"{len(twice)} parameter(s) in more than one optimizer (e.g. {twice[:3]})")
        raise ConfigError(f"phases[{phase.index}].optimizers: {problem}; their params selectors must split what "
                          "the phase trains")


def _prepare(s: Setup) -> None:
    """Let every component that defines ``prepare(model, batches)`` look at training data once, before any
    optimizer exists (a fresh run only: what it decides is in the state dict, which a resume loads), then copy
    ``train.init_from``'s weights. Every process sees the whole batches, so all decide the same."""
    components = [s.model, s.model.combiner, s.distiller, *s.phase_distillers.values(), s.sampler,
                  *s.phase_samplers.values(), *s.callbacks]
    for component in components:
        if hasattr(component, "prepare"):
            batches = iterate_batches(s.splits["train"], s.info, batch_size=s.cfg.train.batch_size, train=True,
                                      augment=s.cfg.data.augment, erase_prob=s.cfg.data.random_erasing,
                                      seed=s.cfg.train.seed, epoch=0, drop_last=True, workers=s.cfg.data.workers)
            component.prepare(s.model, ((_on_device(x, s.device, s.cfg.train.channels_last),
                                        y.to(s.device)) for x, y in batches))
    if s.cfg.train.init_from:  # last, so that it overrides what the components decided (docs/engine.md)
        copy_weights_from(s.model, s.cfg.train.init_from)


def _check_resume(out: Path, last: Path, s: Setup,
                  allow_changes: Collection[str]) -> tuple[dict[str, Any], EpochProgress]:
    """Check the checkpoint ``last`` against today's config and load the model's (and objectives') state from it;
    the optimizers of its phase are restored when that phase starts. Returns the resume's record, and how far the
    epoch it continues had trained (nothing, unless ``last`` is a step checkpoint)."""
    extra = read_extra_state(last)
    trained_with = _resolved_container(trained_config(out, extra, last), last)
    changes = check_resume_config(trained_with, OmegaConf.to_container(s.cfg, resolve=True), allow_changes,
                                  out=out, checkpoint=last)
    epoch, at = extra["epoch"], EpochProgress.from_record(extra)
    if at.step >= s.steps_per_epoch:
        raise ConfigChanged(f"cannot resume {out} from {last.name}: it was written after step {at.step} of epoch "
                            f"{epoch + 1}, but an epoch now has {s.steps_per_epoch} steps (data.subset, data.val_split "
                            "or train.batch_size changed); resume with the run's values")
    load_checkpoint(last, model=_ModelAndObjectives(s))
    within = f", then {at.step} of {s.steps_per_epoch} steps of epoch {epoch + 1}" if at.step else ""
    print(f"resuming {out} from {last.name} (epoch {epoch} of {s.epochs}{within})")
    for key, change in changes.items():
        print(f"  config change, recorded in {RESUME_LOG}: {key}: {change['old']} → {change['new']}")
    return {"epoch": epoch, "step": at.step, "checkpoint": last.name, "changes": changes}, at


def _resolved_container(trained_with: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """A recorded config completed like a new one (schema defaults, recipe names), so only real changes differ."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), trained_with)
    except OmegaConfBaseException as error:
        raise ConfigChanged(f"cannot compare the config of checkpoint {checkpoint} with today's schema: "
                            f"{str(error).splitlines()[0]}") from None
    return OmegaConf.to_container(resolve_recipe(merged), resolve=True)


def _begin(out: Path, s: Setup, resumed: dict[str, Any] | None, overwrite: bool) -> None:
    """Make ``out`` ready for the first epoch to train: a replaced run removed, epoch records after the checkpoint
    dropped, the resolved config written, the resume recorded."""
    if overwrite:
        clear_run(out)
    truncate_epoch_log(out / EPOCH_LOG, resumed["epoch"] if resumed else 0)
    save_config(s.cfg, out / CONFIG_YAML)
    if resumed:
        record_resume(out, resumed)
    if s.cfg.train.precise_bn:
        print(f"precise BatchNorm is on: statistics are re-estimated on {s.cfg.train.precise_bn} training batches "
              "before each evaluation (train.precise_bn)")
    if "val" not in s.splits:
        print("data.val_split is 0: no validation split is held out, so the accuracy printed each epoch is on the "
              "test split (logged as test_acc)")


def _finish(out: Path, s: Setup, keep: list[torch.nn.Module]) -> dict[str, Any]:
    """Evaluate on the test split; write ``metrics.json`` and the trained model (``config.json``, weights).
    ``keep``: the modules the last phase froze (precise BatchNorm leaves them alone)."""
    _precise_bn(s, s.epochs, keep=keep)
    metrics = evaluate(s.model, s.splits["test"], s.info, batch_size=s.cfg.data.eval_batch_size, device=s.device,
                       workers=s.cfg.data.workers, world=s.world)
    metrics["split"] = "test"
    if not s.world.main:
        return metrics
    described = s.distiller.describe() if hasattr(s.distiller, "describe") else {}
    if described:  # e.g. the teachers a distiller used and their resolved revisions
        metrics["distiller"] = described
    changed = resumes_that_changed_the_result(out)
    if changed:  # --allow-change: these numbers are not those of one run of config.yaml
        metrics["resumed_with_changes"] = changed
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    save_pretrained(s.model.cpu(), out)
    return metrics


@contextlib.contextmanager
def _resumable_when_disk_full(out: Path) -> Iterator[None]:
    """Turn a full disk into :class:`OutOfDiskSpace`, which says what is kept and how to continue."""
    try:
        yield
    except OSError as error:
        if error.errno not in _DISK_FULL:
            raise
        last = latest_checkpoint(out)
        kept = (f"the last complete checkpoint, {last}, is intact" if last
                else "no epoch had finished, so there is no checkpoint yet")
        raise OutOfDiskSpace(
            f"no space left on the disk of {out} (writing {error.filename or 'a file'}: {error.strerror}); {kept}. "
            f"Free space there, then continue with: selfens train CONFIG --out {out} --resume") from error


def _tidy_interrupted_saves(out: Path) -> None:
    """Remove (or put back) what saves killed midway left in ``out`` and its checkpoints, saying so."""
    done = clean_interrupted_saves(out / CHECKPOINTS_DIR) + clean_interrupted_saves(out)
    if done:
        print(f"tidied {out} after an interrupted save: " + "; ".join(done))


def _train_epoch(s: Setup, run: PhaseRun, state: TrainState, so_far: EpochProgress,
                 progress: bool) -> dict[str, float]:
    """One epoch of steps of the phase ``run``, from step ``so_far.step`` on (more than 0 when resumed from a step
    checkpoint), updating ``so_far`` and writing a step checkpoint every ``train.checkpoint_every_steps`` steps of
    the run; returns the mean of each loss term over the epoch."""
    from tqdm.auto import tqdm

    cfg, epoch, steps = s.cfg, state.epoch, s.steps_per_epoch
    s.model.train()
    for module in run.held:  # frozen in this phase: BatchNorm statistics and dropout as in evaluation
        module.eval()
    sampler = s.phase_samplers.get(run.phase.index, s.sampler)
    listeners = s.listeners(run.phase)
    generator = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
    batches = _epoch_batches(s, sampler, epoch, generator, skip=so_far.step)
    autocast = (torch.autocast(s.device.type, dtype=AUTOCAST_DTYPES[cfg.train.precision])
                if cfg.train.precision in AUTOCAST_DTYPES else contextlib.nullcontext())
    trained = [p for group in run.optimizer.param_groups for p in group["params"]]
    sums, every, clock = so_far.sums, cfg.train.checkpoint_every_steps, time.perf_counter() - so_far.seconds
    bar = tqdm(batches, total=steps, initial=so_far.step, desc=f"epoch {epoch + 1}/{s.epochs}",
               disable=not (progress and s.world.main), mininterval=1.0)
    for step, (x, y) in enumerate(bar, start=so_far.step):
        run.optimizer.zero_grad(set_to_none=True)
        for p in _plan(s, sampler, x, y, epoch, step, generator):
            with autocast, s.batchnorm_scope():
                try:
                    terms = _loss_terms(s, run, p)
                except NonFiniteInputError as error:  # name the batch: (train.seed, epoch, step) reproduce it
                    raise NonFiniteInputError(f"training batch at epoch {epoch + 1}, step {step + 1}: "
                                              f"{error}") from None
            if not terms:  # e.g. only the combiner trains, and this pass does not run every member
                continue
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise _diverged(loss, terms, epoch * steps + step, steps, state.out)
            run.scaler.scale(loss).backward()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item()
        _optimizer_step(s, run, trained)
        state.step += 1
        if cfg.train.compile and run.phase.index not in s.compiled_phases:
            s.compiled_phases.add(run.phase.index)
            print(f"\ntrain.compile: the phase's first step took {time.perf_counter() - clock - so_far.seconds:.1f} s, "
                  "compilation included", flush=True)
        notify(listeners, "on_step_end", state)
        so_far.step, so_far.seconds = step + 1, time.perf_counter() - clock
        if every and state.step % every == 0 and so_far.step < steps:  # an epoch's end has a checkpoint of its own
            _save(state.out, epoch, s, run, so_far)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(sums.values()) / (step + 1):.3f}", refresh=False)
    return mean_over_ranks({k: v / steps for k, v in sums.items()}, s.world)


def _optimizer_step(s: Setup, run: PhaseRun, trained: list[torch.nn.Parameter]) -> None:
    """Average the gradients over processes, unscale them (fp16), clip them (``train.grad_clip``), step every
    optimizer of the phase and its schedule."""
    average_gradients(trained, s.world)
    for optimizer in run.optimizer.optimizers:
        run.scaler.unscale_(optimizer)
    if s.cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in s.model.parameters() if p.requires_grad], s.cfg.train.grad_clip)
    for optimizer in run.optimizer.optimizers:
        run.scaler.step(optimizer)
    run.scaler.update()
    run.scheduler.step()


def _diverged(loss: torch.Tensor, terms: dict[str, torch.Tensor], global_step: int, steps_per_epoch: int,
              out: Path) -> TrainingDiverged:
    """The error for a loss that is no longer finite at ``global_step`` (0-based), naming the last good checkpoint."""
    epoch, step = divmod(global_step, steps_per_epoch)
    return TrainingDiverged(
        f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} (global step {global_step + 1}; terms: "
        f"{_fmt(terms)}). Training stopped; the last good checkpoint is "
        f"{latest_checkpoint(out) or 'none (no epoch finished)'}. Try a lower train.lr, train.warmup_epochs or "
        "train.grad_clip.")


def _epoch_batches(s: Setup, sampler: Any, epoch: int, generator: torch.Generator,
                   skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches of ``epoch`` from step ``skip`` on. The ``skip`` batches before (a resume from a step
    checkpoint) are drawn and planned again, without training, so that the data's and the sampler's generators, and
    whatever the sampler keeps of the epoch (a pool of batches), are as the uninterrupted run left them; the global
    RNG, which the checkpoint restored, is left as it is."""
    cfg = s.cfg
    batches = iterate_batches(s.splits["train"], s.info, batch_size=cfg.train.batch_size, train=True,
                              augment=cfg.data.augment, erase_prob=cfg.data.random_erasing, seed=cfg.train.seed,
                              epoch=epoch, drop_last=True, workers=cfg.data.workers, shard=s.world.shard,
                              pin_memory=s.device.type == "cuda")
    if skip:
        with torch.random.fork_rng(devices=[]):
            for step, (x, y) in enumerate(islice(batches, skip)):
                _plan(s, sampler, x, y, epoch, step, generator)
    return batches


def _plan(s: Setup, sampler: Any, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int,
          generator: torch.Generator) -> list[Pass]:
    """The sampler's passes for step ``step`` of ``epoch`` (0-based), with the context samplers may ask for."""
    return plan_passes(sampler, x, y, epoch=epoch, num_epochs=s.epochs, generator=generator,
                       progress=(epoch + step / s.steps_per_epoch) / s.epochs, num_members=s.model.num_members)


def _on_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _precise_bn(s: Setup, epoch: int, keep: list[torch.nn.Module] = ()) -> None:
    """With ``train.precise_bn=N``: BatchNorm statistics recomputed on N training batches (this epoch's order, no
    augmentation, like the images evaluated) with the current weights, so an evaluation never sees statistics that
    lag the weights (``batchnorm.py``). Stored in the model: checkpoints and the final weights carry them. The
    modules in ``keep`` (frozen in this phase) keep theirs. With several processes each estimates on its shards and
    the statistics are then averaged over them, as before any evaluation."""
    if s.cfg.train.precise_bn:
        batches = iterate_batches(s.splits["train"], s.info, batch_size=s.cfg.train.batch_size, train=True,
                                  augment=False, seed=s.cfg.train.seed, epoch=epoch, drop_last=True,
                                  workers=s.cfg.data.workers, shard=s.world.shard)
        inputs = (_on_device(x, s.device, s.cfg.train.channels_last) for x, _ in batches)
        with s.batchnorm_scope():
            used = precise_bn(s.model, inputs, s.cfg.train.precise_bn, keep=keep)
        if used is not None and used < s.cfg.train.precise_bn:
            warnings.warn(f"train.precise_bn={s.cfg.train.precise_bn}, but the training split holds {used} batches: "
                          f"BatchNorm statistics were estimated on {used}", stacklevel=1)
    average_batchnorm_statistics(s.model, s.world)


def _loss_terms(s: Setup, run: PhaseRun, p: Pass) -> dict[str, torch.Tensor]:
    """The named loss terms of one pass: the phase's distiller's (when member parameters train), plus a trainable
    combiner's own on detached outputs of a pass that runs every member on one batch. When no member parameter
    trains, the members run without gradient and only the combiner learns."""
    inputs = _on_device(p.inputs, s.device, s.cfg.train.channels_last)
    targets = p.targets.to(s.device, non_blocking=True)
    trains_combiner = run.combiner_trains and p.runs_all(s.model.num_members)
    with contextlib.nullcontext() if run.members_train else torch.no_grad():
        outputs = s.forward(inputs, members=p.members, features=trains_combiner and s.model.combines_features)
    terms = {}
    if run.members_train:
        distiller = s.phase_distillers.get(run.phase.index, s.distiller)
        terms = distiller(outputs.logits, targets, inputs=inputs, model=s.model)
    if trains_combiner:
        terms["combiner"] = s.model.combiner_loss(outputs.detach(), targets)
    return terms


def _log_epoch(s: Setup, run: PhaseRun, out: Path, epoch: int, losses: dict[str, float], seconds: float) -> None:
    """Accuracy per budget on the validation split, or on the test split when none is held out (and then named
    so); one line to metrics.jsonl and one to the console."""
    cfg, lr = s.cfg, run.scheduler.get_last_lr()[0]
    split = "val" if "val" in s.splits else "test"
    _precise_bn(s, epoch, keep=run.held)
    measured = evaluate(s.model, s.splits[split], s.info, batch_size=cfg.data.eval_batch_size, device=s.device,
                        flops=False, workers=cfg.data.workers, world=s.world)
    if not s.world.main:
        return
    steps = s.steps_per_epoch
    phase = {"phase": run.phase.name} if len(s.phases) > 1 else {}
    record = {"epoch": epoch + 1, **phase, "lr": lr, "seconds": round(seconds, 2),
              "images_per_s": round(steps * cfg.train.batch_size / seconds, 1), "loss": losses,
              f"{split}_acc": {k: m["acc"] for k, m in measured["members"].items()}}
    with open(out / EPOCH_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"epoch {epoch + 1}: loss {sum(losses.values()):.4f}  {split} acc by members "
          + " ".join(f"{k}:{a:.4f}" for k, a in record[f"{split}_acc"].items()) + f"  ({seconds:.0f}s)")


class _ModelAndObjectives(torch.nn.Module):
    """Model and objectives saved as one state dict: a distiller may own trained parameters (discriminators); a
    phase with its own distiller adds it under ``phase_distillers``."""

    def __init__(self, s: Setup):
        super().__init__()
        self.model, self.distiller = s.model, s.distiller
        if s.phase_distillers:
            self.phase_distillers = torch.nn.ModuleDict({str(i): d for i, d in s.phase_distillers.items()})


def _save(out: Path, epoch: int, s: Setup, run: PhaseRun, so_far: EpochProgress | None = None) -> None:
    """Checkpoint the state after ``epoch`` epochs (``epoch-NNNN``) or, with ``so_far``, after ``so_far.step`` steps
    of the next one (``epoch-NNNN-step-SSSSSS``, with the epoch's loss sums), with the resolved config (a resume
    checks it) and the phase; then keep only the newest ``train.keep_checkpoints`` of both kinds."""
    average_batchnorm_statistics(s.model, s.world)  # every rank resumes, and goes on, from the same statistics
    progress = so_far.record(s.world) if so_far is not None else {}
    if not s.world.main:
        return
    directory = out / CHECKPOINTS_DIR
    name = f"epoch-{epoch:04d}" + (f"-step-{so_far.step:06d}" if so_far is not None else "")
    state = {"epoch": epoch, "phase": run.phase.index, "config": OmegaConf.to_container(s.cfg, resolve=True),
             **progress, **({"grad_scaler": run.scaler.state_dict()} if run.scaler.is_enabled() else {})}
    save_checkpoint(directory / name, model=_ModelAndObjectives(s), optimizer=run.optimizer, scheduler=run.scheduler,
                    extra_state=state)
    newest_last = sorted(directory.glob("epoch-*"), key=lambda path: checkpoint_order(path.name))
    for old in newest_last[:-s.cfg.train.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _fmt(terms: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
