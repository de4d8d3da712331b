"""The run directory of ``selfens train``: who may write into it, and what may be replaced or continued.

Every guard runs before training writes anything:

- :func:`locked` holds ``.selfens-train.lock`` (the owner's pid, host and start time, created with
  ``O_CREAT | O_EXCL``) for the whole run, so two trainings never share a directory. A lock whose process is gone
  (on this host) is reported and taken over; a lock taken on another host is never broken.
- :func:`check_target` refuses a directory that holds a model, a run or anything else, unless the run is resumed
  from its checkpoint or ``overwrite`` replaces it (:func:`clear_run` removes selfens' own files, nothing else).
  :func:`check_output_target` is the same guard for the commands that write a few files into a directory
  (``selfens eval``, ``selfens zoo export``): a run or model there is never replaced without ``overwrite``.
- :func:`check_resume_config` refuses to resume with a config that changes the result, unless each changed key is
  named; :func:`record_resume` writes every resume, changes included, to ``resumes.jsonl``.

A low layer: it knows file names and configs as plain dicts, never models or the engine.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .checkpoint import CHECKPOINTS_DIR, INTERRUPTED_SAVE, latest_checkpoint
from .config import ConfigError
from .registry import first_names

LOCK_FILE = ".selfens-train.lock"
CONFIG_YAML, EPOCH_LOG, RESUME_LOG, METRICS_FILE = "config.yaml", "metrics.jsonl", "resumes.jsonl", "metrics.json"
# A trained model (also a zoo entry's copy); config.json and model.safetensors are pretrained.py's names.
FINISHED_FILES = (METRICS_FILE, "config.json", "model.safetensors", "manifest.json")
RUN_FILES = (CONFIG_YAML, EPOCH_LOG, RESUME_LOG, *FINISHED_FILES)
# Restored with the optimizer's state on --resume (param groups' lr, momentum, weight decay and the optimizer's other
# arguments; the schedule's base lr), with every key under them (train.optimizer_args.betas).
OPTIMIZER_STATE_KEYS = {"train.optimizer", "train.optimizer_args", "train.lr", "train.momentum", "train.nesterov",
                        "train.weight_decay"}
ABSENT = "<absent>"  # the value of a config key one of two compared configs lacks

# Config keys a resume may change without changing the result (the change is still recorded).
RESULT_NEUTRAL_KEYS = {
    "train.keep_checkpoints": "how many checkpoints are kept",
    "train.checkpoint_every_steps": "how often checkpoints are written",
    "data.eval_batch_size": "batch size of evaluation (eval mode: per-image results)",
    "data.root": "where the dataset files are",
    "data.stream": "whether images are held in memory or decoded per batch (the same batches)",
    "data.workers": "how many processes assemble the batches (the same batches)",
}


class RunDirectoryBusy(RuntimeError):
    """Another process trains into the directory (it holds the lock)."""


class RunDirectoryOccupied(FileExistsError):
    """The directory holds a run, a model or other files that training would mix with or replace."""


class OutputNotWritable(ValueError):
    """The output folder cannot be made or written: a file is in the way, or a parent folder is not writable."""


class ConfigChanged(ConfigError):
    """A resume with a config that changes the result of the run."""


# ----------------------------------------------------------------------------------------------------------- locking

def check_writable(out: Path, elsewhere: str = "choose another --out") -> None:
    """Refuse (:class:`OutputNotWritable`), before any work, an output folder that cannot be made or written: a
    file at ``out`` or above it, or a nearest existing folder this user may not write into. ``elsewhere`` says where
    else to write."""
    existing = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), Path("/"))
    if not existing.is_dir():
        where = "is a file" if existing == out else f"cannot be made: {existing} is a file"
        raise OutputNotWritable(f"{out} {where}, not a folder; {elsewhere}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"{out} cannot be written: this user may not write into {existing}; {elsewhere}")



@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the lock of the run directory ``out`` (created if needed) for the ``with`` block.

    Raises :class:`RunDirectoryBusy` naming the owner when a live process holds it. A directory this call created
    and that stays empty (training was refused) is removed again on exit.
    """
    check_writable(out)
    created = not out.exists()
    lock = out / LOCK_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        _acquire(lock)
    except PermissionError as error:  # e.g. a folder that even root may not write into (/sys, /proc)
        raise OutputNotWritable(f"{out} cannot be written ({error.strerror}: {error.filename}); choose another "
                                "--out") from error
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        if created:
            with suppress(OSError):
                out.rmdir()


def _acquire(lock: Path) -> None:
    for _ in range(3):  # tried again after a stale lock was moved aside or the lock was released meanwhile
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            _take_over_if_stale(lock)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%FT%T%z"),
                       "pid_start": _process_start(os.getpid())}, f)
        return
    raise RunDirectoryBusy(f"{lock.parent}: could not take its lock {lock}, other processes keep taking it; retry")


def _take_over_if_stale(lock: Path) -> None:
    """Raise :class:`RunDirectoryBusy` if the lock's owner runs; else report the stale lock and move it aside (if
    another process took it over in between, its fresh lock is put back)."""
    try:
        owner = _read_owner(lock)
    except FileNotFoundError:
        return  # released meanwhile
    if owner is None or _is_running(owner):
        raise RunDirectoryBusy(_busy_message(lock, owner))
    print(f"{lock} is a stale lock: {_describe(owner)} is no longer running (killed?); taking it over")
    aside = lock.with_name(f"{lock.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    if _read_owner(aside) != owner:
        with suppress(FileExistsError):
            os.link(aside, lock)
    aside.unlink()


def _read_owner(lock: Path) -> dict[str, Any] | None:
    """The lock's owner record, or ``None`` when the file is unreadable (its writer killed before writing it);
    ``FileNotFoundError`` when it is gone."""
    try:
        owner = json.loads(lock.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return None
    ok = isinstance(owner, dict) and isinstance(owner.get("pid"), int) and owner["pid"] > 0
    return owner if ok else None


def _is_running(owner: dict[str, Any]) -> bool:
    """Whether the lock's owner still runs: its pid is alive with the start time the lock recorded. A process on
    another host is taken to run (it cannot be checked), and so is any process off POSIX (there ``os.kill(pid, 0)``
    would stop it)."""
    if owner.get("host") != socket.gethostname() or os.name != "posix":
        return True
    pid, recorded = owner["pid"], owner.get("pid_start")
    if pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            pass
    # A different start time means the pid was reused: a restarted container's trainer often gets its old pid.
    return recorded is None or recorded == _process_start(pid)


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux ``/proc/PID/stat`` field 22), or ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _describe(owner: dict[str, Any]) -> str:
    return f"pid {owner['pid']} on host {owner.get('host', '?')} (since {owner.get('started', '?')})"


def _busy_message(lock: Path, owner: dict[str, Any] | None) -> str:
    if owner is None:
        return (f"{lock.parent} is locked by {lock}, which is unreadable; if no `selfens train` runs on this "
                f"directory, delete {lock} and try again")
    message = (f"{lock.parent} is in use by another `selfens train` ({_describe(owner)}; lock file {lock}); wait "
               f"for it to finish or stop it, or train into another --out")
    if owner.get("host") != socket.gethostname():
        message += f"; selfens cannot tell whether a process on another host runs: if it does not, delete {lock}"
    return message


# --------------------------------------------------------------------------------------------- what may be replaced


def check_target(out: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to continue from, or ``None`` for a new run; raises :class:`RunDirectoryOccupied` (naming
    what is there and what to do) when training into ``out`` could replace or mix with something."""
    if resume and overwrite:
        raise ValueError(f"--resume continues the run in {out} and --overwrite replaces it: pass one of them")
    last = latest_checkpoint(out)
    if resume and last is not None:
        return last
    ours, others = _contents(out)
    if overwrite or not (ours or others):
        if resume:
            print(f"no checkpoint in {out}: starting a new run")
        return None
    if resume and not others and not set(ours) & set(FINISHED_FILES):
        print(f"no checkpoint in {out} (the run stopped before its first epoch ended): starting it again")
        return None
    raise RunDirectoryOccupied(_occupied_message(out, last, ours, others, resume))


def check_output_target(out: Path, writes: Sequence[str], *, command: str, overwrite: bool, elsewhere: str,
                        own_output: Collection[str] = ()) -> None:
    """Refuse (:class:`RunDirectoryOccupied`) to let ``command`` write the files ``writes`` into ``out`` when ``out``
    holds a run or a trained model (selfens' run files, checkpoints) or a file of ``writes``, unless ``overwrite``.

    ``own_output`` are the files an earlier ``command`` leaves: replacing them alone is what running it again means,
    so they are refused only next to a run (whose ``metrics.json`` is the run's own test metrics). With
    ``overwrite`` the replaced files are named. ``elsewhere`` says where else to write (``"choose another --out"``).
    A folder that cannot be made or written is refused too (:func:`check_writable`).
    """
    check_writable(out, elsewhere)
    ours, _ = _contents(out)
    replaced = [name for name in writes if (out / name).is_file()]
    held = sorted({*ours, *replaced} - set(own_output))
    if not held:
        return
    if overwrite:
        if replaced:
            print(f"--overwrite: replacing {first_names(replaced)} in {out}")
        return
    run = " (a trained model or run)" if set(ours) - set(own_output) else ""
    does = (f"would replace its {first_names(replaced)}" if replaced
            else f"would write {first_names(list(writes))} into it")
    raise RunDirectoryOccupied(f"{out} holds {first_names(held)}{run}; {command} {does}. Pass --overwrite to write "
                               f"anyway (nothing else in {out} is touched), or {elsewhere}")


def clear_run(out: Path) -> None:
    """Remove selfens' own files and checkpoints from ``out`` (``--overwrite``), saying what goes and what stays."""
    ours, others = _contents(out)
    if not ours:
        return
    kept = f"; keeping {first_names(others)}" if others else ""
    print(f"--overwrite: removing {first_names(ours)} from {out}{kept}")
    for name in ours:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _contents(out: Path) -> tuple[list[str], list[str]]:
    """``out``'s entries: selfens' own (run files, checkpoints, leftovers of interrupted saves), and the others.
    The lock files are neither."""
    ours, others = [], []
    for entry in sorted(out.iterdir()) if out.is_dir() else []:
        if entry.name.startswith(LOCK_FILE):
            continue
        own = entry.name in (*RUN_FILES, CHECKPOINTS_DIR) or INTERRUPTED_SAVE.match(entry.name)
        (ours if own else others).append(entry.name + "/" * entry.is_dir())
    return ours, others


def _occupied_message(out: Path, last: Path | None, ours: list[str], others: list[str], resume: bool) -> str:
    also = f"; it also holds {first_names(others)}, which --overwrite keeps" if ours and others else ""
    if last is not None:
        return (f"{out} already holds a run (checkpoint {last.name}); pass --resume to continue it, --overwrite to "
                f"replace it, or choose another --out{also}")
    if set(ours) & set(FINISHED_FILES):
        why = " and no checkpoint to resume from" if resume else ""
        return (f"{out} holds a trained model or run ({first_names(ours)}){why}; pass --overwrite to replace it, or "
                f"choose another --out{also}")
    if ours:
        return (f"{out} holds a run that stopped before its first checkpoint ({first_names(ours)}); pass --resume to "
                f"start it again, --overwrite to replace it, or choose another --out{also}")
    return (f"{out} is not empty and holds no selfens run ({first_names(others)}); choose a new or empty --out, or "
            f"pass --overwrite to train next to these files (they are kept)")


# ------------------------------------------------------------------------------------------------ resuming honestly


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The dotted config keys whose values differ between two config dicts: ``{key: (before, after)}``; a key
    missing on one side has the value :data:`ABSENT` there."""
    old, new = dict(_flatten(before)), dict(_flatten(after))
    return {k: (old.get(k, ABSENT), new.get(k, ABSENT)) for k in sorted(old.keys() | new.keys())
            if old.get(k, ABSENT) != new.get(k, ABSENT)}


def check_resume_config(trained_with: dict[str, Any], now: dict[str, Any], allowed: Collection[str], *, out: Path,
                        checkpoint: Path) -> dict[str, dict[str, Any]]:
    """Refuse (:class:`ConfigChanged`, listing each key old → new) to resume ``checkpoint`` with a config that
    changes the result, unless the key is in ``allowed``; return every change as a record for ``resumes.jsonl``."""
    changes = config_changes(trained_with, now)
    fixed = [k for k in changes if k in allowed and _restored_from_optimizer_state(k)]
    if fixed:
        raise ConfigChanged(
            f"cannot resume {out} with {', '.join(fixed)} changed, even with --allow-change: checkpoint "
            f"{checkpoint.name} restores the optimizer's own settings (optimizer, learning rates, momentum, weight "
            "decay), so the change would be recorded but not applied. Train a new run into another --out instead")
    refused = {k: v for k, v in changes.items() if k not in RESULT_NEUTRAL_KEYS and k not in allowed}
    if refused:
        listed = "\n".join(f"  {k}: {json.dumps(old)} → {json.dumps(new)}" for k, (old, new) in refused.items())
        restore = " ".join(f"{k}={json.dumps(old, separators=(',', ':'))}" for k, (old, _) in refused.items()
                           if old != ABSENT)
        raise ConfigChanged(
            f"cannot resume {out}: the config differs from the one checkpoint {checkpoint.name} was trained with, "
            f"and these keys change the result:\n{listed}\nResume with the run's values"
            + (f" ({restore})" if restore else "") + ", train a new run into another --out, or accept a change "
            f"with --allow-change KEY (recorded in {out / RESUME_LOG})")
    return {k: {"old": old, "new": new, "changes_result": k not in RESULT_NEUTRAL_KEYS}
            for k, (old, new) in changes.items()}


def _restored_from_optimizer_state(key: str) -> bool:
    """Keys whose values a resumed optimizer takes from its checkpointed state, not from the config."""
    return (any(key == k or key.startswith(f"{k}.") for k in OPTIMIZER_STATE_KEYS) or key.endswith(".args.lr")
            or re.match(r"phases\.\d+\.(optimizer|optimizers|lr|weight_decay|optimizer_args)(\.|$)", key) is not None)


def trained_config(out: Path, extra_state: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """The config the checkpoint was trained with: saved in the checkpoint, else (older runs) ``config.yaml``."""
    if extra_state.get("config"):
        return extra_state["config"]
    if not (out / CONFIG_YAML).is_file():
        raise ConfigChanged(f"cannot resume {out}: neither checkpoint {checkpoint.name} nor {out / CONFIG_YAML} "
                            f"records the config the run was trained with; put the run's {CONFIG_YAML} back")
    return OmegaConf.to_container(OmegaConf.load(out / CONFIG_YAML))


def record_resume(out: Path, record: dict[str, Any]) -> None:
    """Append one resume (epoch, checkpoint, config changes) to ``resumes.jsonl``."""
    with open(out / RESUME_LOG, "a") as f:
        f.write(json.dumps({**record, "time": time.strftime("%FT%T%z")}) + "\n")


def resumes_that_changed_the_result(out: Path) -> list[dict[str, Any]]:
    """The records of ``resumes.jsonl`` that accepted a change of the result (``--allow-change``)."""
    if not (out / RESUME_LOG).is_file():
        return []
    records = _read_jsonl(out / RESUME_LOG)
    return [r for r in records if any(c.get("changes_result") for c in r.get("changes", {}).values())]


def truncate_epoch_log(log: Path, epochs: int) -> None:
    """Keep one record per epoch up to ``epochs`` in the epoch log (the checkpoint a run continues from): records
    of epochs trained after it, duplicates and a line cut by a kill go. Rewritten atomically."""
    if not log.is_file():
        return
    by_epoch = {r["epoch"]: r for r in _read_jsonl(log) if isinstance(r.get("epoch"), int) and r["epoch"] <= epochs}
    tmp = log.with_name(f".{log.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text("".join(json.dumps(by_epoch[e]) + "\n" for e in sorted(by_epoch)))
    os.replace(tmp, log)


def read_epoch_log(out: Path) -> list[dict[str, Any]]:
    """The epoch records of the run in ``out`` (``metrics.jsonl``), oldest first; [] when there are none."""
    return _read_jsonl(out / EPOCH_LOG) if (out / EPOCH_LOG).is_file() else []


def idle_epoch_seconds(records: Sequence[dict[str, Any]]) -> list[float]:
    """Each epoch's training seconds on an otherwise idle machine: its phase's fastest epoch. Sharing the cores only
    ever slows an epoch down, and on a shared machine several epochs of a run can be stretched, so that even the
    median overstates what the run costs; epochs of one phase do the same work."""
    fastest: dict[str, float] = {}
    for record in records:
        phase = record.get("phase", "")
        fastest[phase] = min(fastest.get(phase, float("inf")), record["seconds"])
    return [fastest[record.get("phase", "")] for record in records]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        with suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def _flatten(tree: dict[str, Any] | list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf; the entries of a list of sections by index (``phases.1.lr``), a list
    of values as one value (``train.milestones``)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        if isinstance(value, dict) or (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
