"""The one training loop every method runs through.

Per step: the sampler plans passes (which inputs through which members), the model returns member logits
(M, B, C), the distiller turns them into named loss terms, a combiner with parameters adds its own loss on detached
outputs; gradients accumulate over the passes, then one optimizer step. Methods plug in through those components and
never through this file.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, save_config
from .data import DatasetInfo, Split, iterate_batches, load_dataset, num_batches
from .ensemble import SelfEnsemble
from .evaluation import evaluate
from .factory import build_component, build_model, recipe_defaults
from .optim import make_optimizer, make_scheduler
from .pretrained import save_pretrained
from .samplers import Pass, plan_passes


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the run stopped and its last good checkpoint was kept."""


@dataclass
class Setup:
    """Everything a run needs, built from its config before the first step (so config errors come first)."""

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


def _component(cfg: DictConfig, kind: str, registry: str, default: str) -> Any:
    section = cfg[kind]
    name = section.name or recipe_defaults(cfg.model.name).get(kind, default)
    try:
        return name, build_component(registry, name, OmegaConf.to_container(section.args))
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"{kind} (name {name!r}): {error}") from None


def build(cfg: DictConfig) -> Setup:
    """Resolve the config into model, components and data; every error names the config key at fault."""
    torch.manual_seed(cfg.train.seed)
    distiller_name, distiller = _component(cfg, "distiller", "distillers", "independent")
    _, sampler = _component(cfg, "sampler", "samplers", "all")
    combiner_name, combiner = _component(cfg, "combiner", "combiners", "mean_logits")
    info, splits = load_dataset(cfg.data.name, root=cfg.data.root, subset=cfg.data.subset,
                                val_split=cfg.data.val_split, seed=cfg.train.seed)
    try:
        model = build_model(cfg.model.name, num_classes=info.num_classes, in_chans=info.in_chans, combiner=combiner,
                       **OmegaConf.to_container(cfg.model.args))
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"model (name {cfg.model.name!r}): {error}") from None
    model.pretrained_cfg.update(
        combiner=combiner_name, combiner_args=OmegaConf.to_container(cfg.combiner.args), input_size=info.input_size,
        mean=info.mean, std=info.std, class_names=list(info.class_names), dataset=info.name,
    )
    if hasattr(distiller, "attach"):  # hooks and parameters sized from the model, before the optimizer exists
        try:
            distiller.attach(model)
        except ValueError as error:
            raise ConfigError(f"distiller (name {distiller_name!r}): {error}") from None
    device = pick_device(cfg.train.device)
    model.to(device)
    distiller.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    steps = num_batches(splits["train"], cfg.train.batch_size, drop_last=True)
    return Setup(model, distiller, sampler, info, splits, device, steps)


def train(cfg: DictConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train from ``cfg`` into ``out_dir``; with ``resume``, continue from its newest checkpoint. Returns the final
    test metrics (also written to ``out_dir/metrics.json``)."""
    out = Path(out_dir)
    last = latest_checkpoint(out) if out.exists() else None
    if last is not None and not resume:
        raise FileExistsError(f"{out} already holds a run (checkpoint {last.name}); pass --resume to continue it "
                              f"or choose another --out")
    s = build(cfg)
    optimizer = make_optimizer(cfg.train, s.model, s.distiller)
    scheduler = make_scheduler(cfg.train, optimizer, s.steps_per_epoch)
    start_epoch = 0
    if resume and last is not None:
        start_epoch = load_checkpoint(last, model=_Both(s.model, s.distiller), optimizer=optimizer,
                                      scheduler=scheduler)["epoch"]
        print(f"resuming {out} from {last.name} (epoch {start_epoch} of {cfg.train.epochs})")
    elif resume:
        print(f"no checkpoint in {out}: starting a new run")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    for epoch in range(start_epoch, cfg.train.epochs):
        started = time.perf_counter()
        losses = _train_epoch(s, cfg, epoch, optimizer, scheduler, out, progress)
        _log_epoch(s, cfg, out, epoch, losses, time.perf_counter() - started, scheduler.get_last_lr()[0])
        _save(out, epoch + 1, s, optimizer, scheduler, cfg.train.keep_checkpoints)
    metrics = evaluate(s.model, s.splits["test"], s.info, batch_size=cfg.data.eval_batch_size, device=s.device)
    metrics["split"] = "test"
    described = s.distiller.describe() if hasattr(s.distiller, "describe") else {}
    if described:  # e.g. the teachers a distiller used and their resolved revisions
        metrics["distiller"] = described
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_pretrained(s.model.cpu(), out)
    return metrics


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
                terms = _loss_terms(s, cfg, p)
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


def _loss_terms(s: Setup, cfg: DictConfig, p: Pass) -> dict[str, torch.Tensor]:
    """The named loss terms of one pass: the distiller's, plus a trainable combiner's own on detached outputs of a
    pass that runs every member on one batch."""
    inputs = p.inputs.to(s.device, non_blocking=True)
    if cfg.train.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    targets = p.targets.to(s.device, non_blocking=True)
    outputs = s.model(inputs, members=p.members)
    terms = s.distiller(outputs, targets, inputs=inputs, model=s.model)
    if p.runs_all(s.model.num_members) and any(q.requires_grad for q in s.model.combiner.parameters()):
        terms["combiner"] = s.model.combiner.loss(outputs.detach(), targets)
    return terms


def _log_epoch(s: Setup, cfg: DictConfig, out: Path, epoch: int, losses: dict[str, float], seconds: float,
               lr: float) -> None:
    """Validation accuracy per budget; one line to metrics.jsonl and one to the console."""
    split = s.splits.get("val", s.splits["test"])
    val = evaluate(s.model, split, s.info, batch_size=cfg.data.eval_batch_size, device=s.device, flops=False)
    steps = s.steps_per_epoch
    record = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 2),
              "images_per_s": round(steps * cfg.train.batch_size / seconds, 1), "loss": losses,
              "val_acc": {k: m["acc"] for k, m in val["members"].items()}}
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"epoch {epoch + 1}: loss {sum(losses.values()):.4f}  val acc by members "
          + " ".join(f"{k}:{a:.4f}" for k, a in record["val_acc"].items()) + f"  ({seconds:.0f}s)")


class _Both(torch.nn.Module):
    """Model and distiller saved as one state dict: a distiller may own trained parameters (discriminators)."""

    def __init__(self, model: torch.nn.Module, distiller: torch.nn.Module):
        super().__init__()
        self.model, self.distiller = model, distiller


def _save(out: Path, epoch: int, s: Setup, optimizer, scheduler, keep: int) -> None:
    directory = out / "checkpoints"
    save_checkpoint(directory / f"epoch-{epoch:04d}", model=_Both(s.model, s.distiller), optimizer=optimizer,
                    scheduler=scheduler, extra_state={"epoch": epoch})
    for old in sorted(directory.glob("epoch-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _fmt(terms: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
