"""The one training loop every method runs through.

Per step: the sampler plans passes (which inputs through which members), the model returns member logits
(M, B, C), the distiller turns them into named loss terms, a combiner with parameters adds its own loss on detached
outputs; gradients accumulate over the passes, then one optimizer step. Methods plug in through those components and
never through this file. What may be written into the run directory, and by whom, is :mod:`.rundir`'s business.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import json
import shutil
import time
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .batchnorm import precise_bn
from .checkpoint import clean_interrupted_saves, latest_checkpoint, load_checkpoint, read_extra_state, save_checkpoint
from .config import ConfigError, RunConfig, save_config
from .data import DatasetInfo, Split, iterate_batches, load_dataset, num_batches
from .ensemble import NonFiniteInputError, SelfEnsemble
from .evaluation import evaluate
from .factory import build_component, build_model, recipe_defaults
from .optim import make_optimizer, make_scheduler
from .pretrained import save_pretrained
from .rundir import (
    CHECKPOINTS_DIR,
    CONFIG_YAML,
    EPOCH_LOG,
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

# The components every model has, and the core's default when its plugin names none.
COMPONENT_DEFAULTS = {"distiller": "independent", "sampler": "all", "combiner": "mean_logits"}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the run stopped and its last good checkpoint was kept."""


class OutOfDiskSpace(RuntimeError):
    """The disk of the run directory filled up; the last complete checkpoint is intact, so the run can resume."""


@dataclass
class Setup:
    """Everything a run needs, built from its config before the first step (so config errors come first)."""

    cfg: DictConfig  # with the component names resolved (resolve_recipe)
    model: SelfEnsemble
    distiller: torch.nn.Module
    sampler: Any
    info: DatasetInfo
    splits: dict[str, Split]
    device: torch.device
    steps_per_epoch: int


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use train.device=auto")
    return torch.device(name)


def resolve_recipe(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose unset component names (``distiller``, ``sampler``, ``combiner``) are the model's
    recipe defaults (else the core's), so that ``config.yaml`` and resume checks say what actually runs."""
    resolved = copy.deepcopy(cfg)
    recipe = recipe_defaults(cfg.model.name)
    for kind, core_default in COMPONENT_DEFAULTS.items():
        if resolved[kind].name is None:
            resolved[kind].name = recipe.get(kind, core_default)
    return resolved


def _component(cfg: DictConfig, kind: str, registry: str) -> Any:
    name = cfg[kind].name
    try:
        return build_component(registry, name, OmegaConf.to_container(cfg[kind].args))
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"{kind} (name {name!r}): {error}") from None


def _components_record(cfg: DictConfig) -> dict[str, Any]:
    """Names and arguments of the components, for ``config.json`` (the combiner's also rebuild the model)."""
    record = {}
    for kind in COMPONENT_DEFAULTS:
        record[kind] = cfg[kind].name
        record[f"{kind}_args"] = OmegaConf.to_container(cfg[kind].args)
    return record


def build(cfg: DictConfig) -> Setup:
    """Resolve the config into model, components and data; every error names the config key at fault."""
    cfg = resolve_recipe(cfg)
    torch.manual_seed(cfg.train.seed)
    distiller = _component(cfg, "distiller", "distillers")
    sampler = _component(cfg, "sampler", "samplers")
    combiner = _component(cfg, "combiner", "combiners")
    info, splits = load_dataset(cfg.data.name, root=cfg.data.root, subset=cfg.data.subset,
                                val_split=cfg.data.val_split, seed=cfg.train.seed)
    try:
        model = build_model(cfg.model.name, num_classes=info.num_classes, in_chans=info.in_chans, combiner=combiner,
                       **OmegaConf.to_container(cfg.model.args))
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"model (name {cfg.model.name!r}): {error}") from None
    model.pretrained_cfg.update(
        **_components_record(cfg), input_size=info.input_size, mean=info.mean, std=info.std,
        class_names=list(info.class_names), dataset=info.name,
    )
    if hasattr(distiller, "attach"):  # hooks and parameters sized from the model, before the optimizer exists
        try:
            distiller.attach(model)
        except ValueError as error:
            raise ConfigError(f"distiller (name {cfg.distiller.name!r}): {error}") from None
    device = pick_device(cfg.train.device)
    model.to(device)
    distiller.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    steps = num_batches(splits["train"], cfg.train.batch_size, drop_last=True)
    return Setup(cfg, model, distiller, sampler, info, splits, device, steps)


def train(cfg: DictConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          allow_changes: Collection[str] = (), progress: bool = True) -> dict[str, Any]:
    """Train from ``cfg`` into ``out_dir``; returns the final test metrics (also written to ``metrics.json``).

    ``resume`` continues from the newest checkpoint, refusing a config that changes the result unless each changed
    key is in ``allow_changes`` (recorded in ``resumes.jsonl``); ``overwrite`` replaces a run or model already in
    ``out_dir``, which is otherwise never touched. The directory is locked for the whole run (see :mod:`.rundir`).
    """
    out = Path(out_dir)
    with locked(out):
        _tidy_interrupted_saves(out)
        last = check_target(out, resume=resume, overwrite=overwrite)
        s = build(cfg)
        optimizer = make_optimizer(s.cfg.train, s.model, s.distiller)
        scheduler = make_scheduler(s.cfg.train, optimizer, s.steps_per_epoch)
        resumed = _resume(out, last, s, optimizer, scheduler, allow_changes) if last else None
        with _resumable_when_disk_full(out):
            _begin(out, s, resumed, overwrite)
            for epoch in range(resumed["epoch"] if resumed else 0, s.cfg.train.epochs):
                started = time.perf_counter()
                losses = _train_epoch(s, s.cfg, epoch, optimizer, scheduler, out, progress)
                _log_epoch(s, s.cfg, out, epoch, losses, time.perf_counter() - started, scheduler.get_last_lr()[0])
                _save(out, epoch + 1, s, optimizer, scheduler)
            return _finish(out, s)


def _resume(out: Path, last: Path, s: Setup, optimizer, scheduler, allow_changes: Collection[str]) -> dict[str, Any]:
    """Load the checkpoint ``last`` once the config is checked against the one it was trained with; return the
    resume's record (epoch, checkpoint, config changes)."""
    trained_with = _resolved_container(trained_config(out, read_extra_state(last), last), last)
    changes = check_resume_config(trained_with, OmegaConf.to_container(s.cfg, resolve=True), allow_changes,
                                  out=out, checkpoint=last)
    epoch = load_checkpoint(last, model=_Both(s.model, s.distiller), optimizer=optimizer, scheduler=scheduler)["epoch"]
    print(f"resuming {out} from {last.name} (epoch {epoch} of {s.cfg.train.epochs})")
    for key, change in changes.items():
        print(f"  config change, recorded in {RESUME_LOG}: {key}: {change['old']} → {change['new']}")
    return {"epoch": epoch, "checkpoint": last.name, "changes": changes}


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


def _finish(out: Path, s: Setup) -> dict[str, Any]:
    """Evaluate on the test split; write ``metrics.json`` and the trained model (``config.json``, weights)."""
    _precise_bn(s, s.cfg.train.epochs)
    metrics = evaluate(s.model, s.splits["test"], s.info, batch_size=s.cfg.data.eval_batch_size, device=s.device)
    metrics["split"] = "test"
    described = s.distiller.describe() if hasattr(s.distiller, "describe") else {}
    if described:  # e.g. the teachers a distiller used and their resolved revisions
        metrics["distiller"] = described
    changed = resumes_that_changed_the_result(out)
    if changed:  # --allow-change: these numbers are not those of one run of config.yaml
        metrics["resumed_with_changes"] = changed
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
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


def _train_epoch(s: Setup, cfg: DictConfig, epoch: int, optimizer, scheduler, out: Path,
                 progress: bool) -> dict[str, float]:
    """One epoch of steps; returns the mean of each loss term."""
    from tqdm.auto import tqdm

    s.model.train()
    steps = s.steps_per_epoch
    batches = iterate_batches(s.splits["train"], s.info, batch_size=cfg.train.batch_size, train=True,
                              augment=cfg.data.augment, seed=cfg.train.seed, epoch=epoch, drop_last=True)
    generator = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
    autocast = (torch.autocast(s.device.type, dtype=torch.bfloat16) if cfg.train.precision == "bf16"
                else contextlib.nullcontext())
    sums: dict[str, float] = {}
    bar = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not progress,
               mininterval=1.0)
    for step, (x, y) in enumerate(bar):
        optimizer.zero_grad(set_to_none=True)
        for p in plan_passes(s.sampler, x, y, epoch=epoch, num_epochs=cfg.train.epochs, generator=generator,
                             progress=(epoch + step / steps) / cfg.train.epochs, num_members=s.model.num_members):
            with autocast:
                try:
                    terms = _loss_terms(s, cfg, p)
                except NonFiniteInputError as error:  # name the batch: (train.seed, epoch, step) reproduce it
                    raise NonFiniteInputError(f"training batch at epoch {epoch + 1}, step {step + 1}: "
                                              f"{error}") from None
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} (global step "
                    f"{epoch * steps + step + 1}; terms: {_fmt(terms)}). Training stopped; the last good "
                    f"checkpoint is {latest_checkpoint(out) or 'none (no epoch finished)'}. Try a lower train.lr, "
                    f"train.warmup_epochs or train.grad_clip.")
            loss.backward()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        scheduler.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(sums.values()) / (step + 1):.3f}", refresh=False)
    return {k: v / steps for k, v in sums.items()}


def _on_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _precise_bn(s: Setup, epoch: int) -> None:
    """With ``train.precise_bn=N``: BatchNorm statistics recomputed on N training batches (this epoch's order, no
    augmentation, like the images evaluated) with the current weights, so an evaluation never sees statistics that
    lag the weights (``batchnorm.py``). Stored in the model: checkpoints and the final weights carry them."""
    if s.cfg.train.precise_bn:
        batches = iterate_batches(s.splits["train"], s.info, batch_size=s.cfg.train.batch_size, train=True,
                                  augment=False, seed=s.cfg.train.seed, epoch=epoch, drop_last=True)
        inputs = (_on_device(x, s.device, s.cfg.train.channels_last) for x, _ in batches)
        used = precise_bn(s.model, inputs, s.cfg.train.precise_bn)
        if used < s.cfg.train.precise_bn:
            warnings.warn(f"train.precise_bn={s.cfg.train.precise_bn}, but the training split holds {used} batches: "
                          f"BatchNorm statistics were estimated on {used}", stacklevel=1)


def _loss_terms(s: Setup, cfg: DictConfig, p: Pass) -> dict[str, torch.Tensor]:
    """The named loss terms of one pass: the distiller's, plus a trainable combiner's own on detached outputs of a
    pass that runs every member on one batch."""
    inputs = _on_device(p.inputs, s.device, cfg.train.channels_last)
    targets = p.targets.to(s.device, non_blocking=True)
    outputs = s.model(inputs, members=p.members)
    terms = s.distiller(outputs, targets, inputs=inputs, model=s.model)
    if p.runs_all(s.model.num_members) and any(q.requires_grad for q in s.model.combiner.parameters()):
        terms["combiner"] = s.model.combiner.loss(outputs.detach(), targets)
    return terms


def _log_epoch(s: Setup, cfg: DictConfig, out: Path, epoch: int, losses: dict[str, float], seconds: float,
               lr: float) -> None:
    """Accuracy per budget on the validation split, or on the test split when none is held out (and then named
    so); one line to metrics.jsonl and one to the console."""
    split = "val" if "val" in s.splits else "test"
    _precise_bn(s, epoch)
    measured = evaluate(s.model, s.splits[split], s.info, batch_size=cfg.data.eval_batch_size, device=s.device,
                        flops=False)
    steps = s.steps_per_epoch
    record = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 2),
              "images_per_s": round(steps * cfg.train.batch_size / seconds, 1), "loss": losses,
              f"{split}_acc": {k: m["acc"] for k, m in measured["members"].items()}}
    with open(out / EPOCH_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"epoch {epoch + 1}: loss {sum(losses.values()):.4f}  {split} acc by members "
          + " ".join(f"{k}:{a:.4f}" for k, a in record[f"{split}_acc"].items()) + f"  ({seconds:.0f}s)")


class _Both(torch.nn.Module):
    """Model and distiller saved as one state dict: a distiller may own trained parameters (discriminators)."""

    def __init__(self, model: torch.nn.Module, distiller: torch.nn.Module):
        super().__init__()
        self.model, self.distiller = model, distiller


def _save(out: Path, epoch: int, s: Setup, optimizer, scheduler) -> None:
    """Checkpoint the state after ``epoch`` with the resolved config (a resume checks it), then keep only the
    newest ``train.keep_checkpoints``."""
    directory = out / CHECKPOINTS_DIR
    state = {"epoch": epoch, "config": OmegaConf.to_container(s.cfg, resolve=True)}
    save_checkpoint(directory / f"epoch-{epoch:04d}", model=_Both(s.model, s.distiller), optimizer=optimizer,
                    scheduler=scheduler, extra_state=state)
    for old in sorted(directory.glob("epoch-*"))[:-s.cfg.train.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _fmt(terms: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
