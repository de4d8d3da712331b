"""Checkpoints without pickle: tensors in safetensors files, everything else in JSON, written atomically.

A checkpoint is a directory::

    model.safetensors   model weights (``safetensors.torch.save_model``: tied tensors are stored once)
    optim.safetensors   tensors of the optimizers' state ("optimizers.<i>.state.<param_idx>.<name>") and, rarely,
                        of the scheduler
    rng.safetensors     torch RNG states ("cpu", "cuda.<device>") as uint8 tensors
    state.json          optimizer/scheduler state dicts with tensors replaced by {"__tensor__": key}, extra_state

Loading never unpickles anything, so a checkpoint from an untrusted source cannot run code. A save builds the whole
checkpoint in a hidden sibling directory and renames it into place, so ``path`` is always absent, the old checkpoint,
or the complete new one; :func:`clean_interrupted_saves` removes what a save killed midway leaves behind. Files get
the mode the umask gives any new file (``safetensors`` alone would write them 0600). A write error is an ``OSError``
with its errno (``ENOSPC`` for a full disk), whichever library wrote the file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from .registry import first_names

FORMAT = "selfens-checkpoint"
CHECKPOINTS_DIR = "checkpoints"  # where a run directory keeps its checkpoints


class Stateful(Protocol):
    """What a checkpoint saves and restores besides the model: a ``torch.optim`` optimizer or learning-rate
    scheduler, or anything with their ``state_dict`` / ``load_state_dict`` (the engine's ``OptimizerSet``)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state_dict: dict) -> None: ...


class OptimizerLike(Stateful, Protocol):
    param_groups: list[dict]
VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optim.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"

# Markers for values JSON cannot hold directly.
TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"

# What saves write next to their target ``NAME``: ``.NAME.tmp-<uuid>`` while writing, ``.NAME.old-<uuid>`` for the
# replaced version during the swap. Nothing else is ever named so.
INTERRUPTED_SAVE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{32}$")


class CheckpointError(ValueError):
    """A checkpoint file is corrupted or does not fit the objects it is loaded into."""


# ----------------------------------------------------------------------------------------------------------- saving


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: OptimizerLike | None = None,
    scheduler: Stateful | None = None,
    extra_state: dict | None = None,
    rng: bool = True,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically, replacing any existing one; return ``path``.

    ``extra_state`` must be JSON-serialisable (epoch, step, metrics ...). With ``rng`` the torch CPU RNG state, and
    the CUDA ones when CUDA is available, are saved so that a resumed run draws the same random numbers.
    """
    optim_tensors: dict[str, torch.Tensor] = {}
    rng_tensors = _rng_state() if rng else {}
    state = {
        "format": FORMAT,
        "version": VERSION,
        "optimizer": None if optimizer is None else _encode(optimizer.state_dict(), "", optim_tensors),
        "scheduler": None if scheduler is None else _encode(scheduler.state_dict(), "scheduler", optim_tensors),
        "extra_state": extra_state,
        "rng": sorted(rng_tensors),
    }
    state_text = json.dumps(state, indent=1)  # fails on a non-serialisable extra_state before anything is written
    with _atomic_directory(Path(path)) as tmp:
        _write_safetensors_model(tmp / MODEL_FILE, model)
        if optim_tensors:
            _write_safetensors(tmp / OPTIM_FILE, optim_tensors)
        if rng_tensors:
            _write_safetensors(tmp / RNG_FILE, rng_tensors)
        _write_text(tmp / STATE_FILE, state_text)
    return Path(path)


def save_weights(path: str | Path, model: nn.Module) -> Path:
    """Write only the model weights to the safetensors file ``path`` (atomically); return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        _write_safetensors_model(tmp, model)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return path


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Make ``obj`` JSON-serialisable: tensors move to ``tensors`` under a dotted ``key``; tuples and dicts with
    non-string keys are tagged so that :func:`_decode` restores them exactly."""
    if isinstance(obj, torch.Tensor):
        if key in tensors:
            raise ValueError(f"two tensors map to the checkpoint key {key!r}")
        tensors[key] = obj.detach().cpu().contiguous()
        return {TENSOR: key}
    child = f"{key}." if key else ""
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, f"{child}{k}", tensors) for k, v in obj.items()}
        return {ITEMS: [[_check_json_scalar(k, key), _encode(v, f"{child}{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{child}{i}", tensors) for i, v in enumerate(obj)]
        return {TUPLE: items} if isinstance(obj, tuple) else items
    return _check_json_scalar(obj, key)


def _check_json_scalar(value: Any, key: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} (at {key!r}) in a checkpoint")


def _rng_state() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _write_safetensors_model(file: Path, model: nn.Module) -> None:
    with _io_errors_as_oserror(file):
        save_model(model, str(file), metadata={"format": "pt"})
    _finish_file(file)


def _write_safetensors(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    with _io_errors_as_oserror(file):
        save_file(tensors, str(file), metadata={"format": "pt"})
    _finish_file(file)


@contextmanager
def _io_errors_as_oserror(file: Path) -> Iterator[None]:
    """Re-raise an I/O failure of ``safetensors`` (a ``SafetensorError`` whose text ends "(os error N)") as the
    ``OSError`` it is, so that callers can tell a full disk (``ENOSPC``) from a bug."""
    try:
        yield
    except SafetensorError as error:
        code = re.search(r"\(os error (\d+)\)", str(error))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(file)) from error


def _finish_file(file: Path) -> None:
    """Give ``file`` the mode the umask gives any new file (``safetensors`` creates 0600), then make it durable."""
    os.chmod(file, 0o666 & ~_umask())
    _fsync_file(file)


def _umask() -> int:
    """The process umask (reading it means setting it: restored at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _write_text(file: Path, text: str) -> None:
    with open(file, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Make renames and new entries in ``directory`` durable (POSIX only: Windows cannot open directories)."""
    if os.name == "posix":
        _fsync_file(directory)


@contextmanager
def _atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a hidden sibling directory to fill; on success it replaces ``path``, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        yield tmp
        _fsync_directory(tmp)
        _move_into_place(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``; an existing ``path`` is renamed away first (a directory cannot be replaced in one
    rename) and deleted only once the new one is in place, and is put back if that fails."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex}")
        os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    _fsync_directory(path.parent)
    if old is not None:
        shutil.rmtree(old)


# ---------------------------------------------------------------------------------------------------------- loading


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: OptimizerLike | None = None,
    scheduler: Stateful | None = None,
    restore_rng: bool = True,
    strict: bool = True,
) -> dict:
    """Restore ``model`` (and ``optimizer``, ``scheduler``, RNG states when given/asked) from the checkpoint directory
    ``path``; return its ``extra_state`` (``{}`` if none was saved).

    Every file is read and checked first, so a bad checkpoint raises (:class:`CheckpointError`, a ``ValueError``, or
    ``FileNotFoundError``, naming the file) before anything is modified. ``strict=False`` tolerates missing and
    unexpected weight names, never shape mismatches.
    """
    path = Path(path)
    state = _read_state(path / STATE_FILE)
    _check_weights(path / MODEL_FILE, model, strict)
    optimizer_state = None
    if optimizer is not None:
        optimizer_state = _decode_section(state, "optimizer", path / OPTIM_FILE)
        _check_param_groups(optimizer_state, optimizer, path)
    scheduler_state = _decode_section(state, "scheduler", path / OPTIM_FILE) if scheduler is not None else None
    rng_states = _read_safetensors(path / RNG_FILE) if restore_rng and state["rng"] else {}

    load_model(model, str(path / MODEL_FILE), strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state)
    if scheduler is not None:
        scheduler.load_state_dict(scheduler_state)
    _restore_rng(rng_states)
    return state["extra_state"] or {}


def load_weights(path: str | Path, model: nn.Module, strict: bool = True) -> None:
    """Load a weights file written by :func:`save_weights` (or ``save_model``) into ``model``, checked like
    :func:`load_checkpoint` before the model is touched."""
    _check_weights(Path(path), model, strict)
    load_model(model, str(path), strict=strict)


def clean_interrupted_saves(directory: str | Path) -> list[str]:
    """Tidy what saves killed midway left in ``directory``; return what was done, one phrase per entry.

    ``.NAME.tmp-<uuid>`` (never moved into place) is removed. ``.NAME.old-<uuid>`` (the replaced version, renamed
    away just before the new one moved in) is removed when ``NAME`` exists and renamed back to ``NAME`` otherwise, so
    a kill between the two renames loses nothing. Only entries named so are touched. Call it only while no save
    runs in ``directory`` (the engine holds the run directory's lock).
    """
    done = []
    for entry in sorted(Path(directory).glob(".*")):
        match = INTERRUPTED_SAVE.match(entry.name)
        if match is None:
            continue
        target = entry.with_name(match["name"])
        if match["kind"] == "old" and not target.exists():
            os.replace(entry, target)
            done.append(f"restored {target.name} from {entry.name}")
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        done.append(f"removed {entry.name}")
    return done


def read_extra_state(path: str | Path) -> dict:
    """The ``extra_state`` of the checkpoint directory ``path``, read without loading any tensor."""
    return _read_state(Path(path) / STATE_FILE)["extra_state"] or {}


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``run_dir``'s :data:`CHECKPOINTS_DIR`, or ``None``.

    Checkpoints are ordered by :func:`checkpoint_order`; directories whose name does not end in a number, hidden ones
    (saves in progress) and ones lacking a file every checkpoint has are skipped.
    """
    numbered = []
    for candidate in Path(run_dir, CHECKPOINTS_DIR).glob("*"):
        complete = (candidate / STATE_FILE).is_file() and (candidate / MODEL_FILE).is_file()
        if re.search(r"\d$", candidate.name) and complete and not candidate.name.startswith("."):
            numbered.append((checkpoint_order(candidate.name), candidate.stat().st_mtime, candidate))
    return max(numbered)[2] if numbered else None


def checkpoint_order(name: str) -> tuple[int, ...]:
    """The sort key of a checkpoint's name: the numbers in it, compared left to right, so that a step checkpoint
    falls between the epoch checkpoints around it whatever the digits' widths (``epoch-0003`` <
    ``epoch-0003-step-000040`` < ``epoch-0010``)."""
    return tuple(int(number) for number in re.findall(r"\d+", name))


def _read_state(file: Path) -> dict:
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file {file} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint file {file} is corrupted: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a {FORMAT} state file")
    return state


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes stored in ``file``, read from its header only."""
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file {file} does not exist")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"checkpoint file {file} is corrupted or not a safetensors file: {e}") from e


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    _safetensors_shapes(file)  # clear errors for a missing or corrupted file
    try:
        return load_file(str(file))
    except SafetensorError as e:
        raise CheckpointError(f"checkpoint file {file} is corrupted: {e}") from e


def _check_weights(file: Path, model: nn.Module, strict: bool) -> None:
    """Raise :class:`CheckpointError` listing what does not fit if loading ``file`` into ``model`` would fail.

    Mirrors ``safetensors.torch.load_model``: names that share storage in the model (tied weights) form one group,
    satisfied by exactly one of its names in the file. Checking first matters because ``load_model`` copies the
    fitting tensors before it reports the others.
    """
    stored = _safetensors_shapes(file)
    own = model.state_dict()
    missing, unexpected = [], [k for k in stored if k not in own]
    for group in _tied_groups(own):
        present = sorted(k for k in group if k in stored)
        if not present:
            missing += group
        unexpected += [f"{k} (a duplicate of the tied {present[0]})" for k in present[1:]]
    mismatched = [
        f"{k}: checkpoint {list(shape)} vs model {list(own[k].shape)}"
        for k, shape in stored.items()
        if k in own and tuple(own[k].shape) != shape
    ]
    problems = [("shape mismatches", mismatched)]
    if strict:
        problems += [("missing keys", missing), ("unexpected keys", unexpected)]
    report = [f"  {title}: " + first_names(sorted(names)) for title, names in problems if names]
    if report:
        raise CheckpointError(f"weights in {file} do not fit {type(model).__name__}:\n" + "\n".join(report))


def _tied_groups(state_dict: dict[str, torch.Tensor]) -> list[list[str]]:
    """State-dict names grouped by the storage they share (as ``safetensors`` groups them)."""
    groups: dict[Any, list[str]] = defaultdict(list)
    for name, tensor in state_dict.items():
        storage = tensor.untyped_storage()
        shared_key = (tensor.device, storage.data_ptr(), storage.nbytes()) if storage.data_ptr() else name
        groups[shared_key].append(name)
    return [sorted(names) for names in groups.values()]


def _decode_section(state: dict, section: str, tensor_file: Path) -> Any:
    """The ``section`` of ``state.json`` with its tensor references resolved from ``tensor_file``."""
    encoded = state.get(section)
    if encoded is None:
        raise CheckpointError(f"{tensor_file.parent} holds no {section} state to restore")
    tensors = _read_safetensors(tensor_file) if _has_tensor_refs(encoded) else {}
    try:
        return _decode(encoded, tensors)
    except KeyError as e:
        raise CheckpointError(f"checkpoint file {tensor_file} lacks the tensor {e}") from None


def _check_param_groups(saved: dict, optimizer: OptimizerLike, path: Path) -> None:
    """Raise if the saved optimizer state has other parameter-group sizes than ``optimizer`` (it would not load)."""
    parts = saved["optimizers"] if "optimizers" in saved else [saved]  # several optimizers saved as one
    saved_sizes = [len(group["params"]) for part in parts for group in part["param_groups"]]
    own_sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != own_sizes:
        raise CheckpointError(
            f"optimizer state in {path} has parameter groups of sizes {saved_sizes}, the optimizer {own_sizes}"
        )


def _has_tensor_refs(obj: Any) -> bool:
    if isinstance(obj, dict):
        return TENSOR in obj or any(_has_tensor_refs(v) for v in obj.values())
    return isinstance(obj, list) and any(_has_tensor_refs(v) for v in obj)


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if TENSOR in obj:
        return tensors[obj[TENSOR]]
    if TUPLE in obj:
        return tuple(_decode(v, tensors) for v in obj[TUPLE])
    if ITEMS in obj:
        return {k: _decode(v, tensors) for k, v in obj[ITEMS]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _restore_rng(states: dict[str, torch.Tensor]) -> None:
    if "cpu" in states:
        torch.set_rng_state(states["cpu"])
    cuda = {int(k.split(".")[1]): s for k, s in states.items() if k.startswith("cuda.")}
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if any(i >= available for i in cuda):
        warnings.warn(f"checkpoint has CUDA RNG states for {len(cuda)} devices but {available} are available; "
                      "restoring those that exist", stacklevel=3)
    for i, s in cuda.items():
        if i < available:
            torch.cuda.set_rng_state(s, device=i)
