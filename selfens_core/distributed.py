"""Multi-process training with ``torch.distributed``, as ``torchrun`` launches it.

``torchrun --nproc-per-node N -m selfens_core.cli train CONFIG --out DIR`` (or ``selfens train --nproc N``) starts N
processes that describe their place in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`joined` reads it and joins the process group (NCCL on CUDA, gloo on CPU). A plain
``selfens train`` is a world of one and touches nothing here.

How a step is shared (docs/engine.md, "Many processes"):

- ``train.batch_size`` is the **global** batch. Every rank plans the same global batch (order and augmentation draws
  are a function of ``(train.seed, epoch)``) and assembles only its contiguous shard of it
  (:func:`.data.shard_slice`), so N processes see exactly the images one process would.
- Each rank accumulates the gradients of all the sampler's passes over its shard; then :func:`average_gradients`
  all-reduces them once per step, in flat buckets. The mean over ranks of per-shard mean losses is the global mean
  loss, so the update equals the one-process update up to float rounding. This is what
  ``DistributedDataParallel`` computes under ``no_sync()`` for every pass but the last, without wrapping the model:
  a step here runs a variable number of passes through a sampler-chosen subset of members, trains an objective's own
  parameters (discriminators) beside the model's, and phases change what trains, which ``DistributedDataParallel``
  handles only by re-wrapping per phase and traversing the autograd graph every step (``find_unused_parameters``).
  What this gives up is overlapping the all-reduce with the backward pass.
- BatchNorm normalises each rank's shard unless ``train.sync_batchnorm`` (:func:`synced_batchnorm`); its
  running statistics are averaged over ranks (:func:`average_batchnorm_statistics`) before every evaluation and every
  checkpoint, so all ranks evaluate and save the same model.
- Rank 0 alone writes (checkpoints, logs, the final model) and prints; evaluation is sharded and its sums
  all-reduced.
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .batchnorm import batchnorm_layers

BUCKET_BYTES = 25 * 2**20  # gradients all-reduced per collective, as DistributedDataParallel's default bucket
TIMEOUT = datetime.timedelta(minutes=10)  # a rank that waits longer for the others gives up (a hung peer)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run: ``rank`` of ``size``, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes and prints (rank 0)."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, size)``: which part of every batch this process takes (see :func:`.data.shard_slice`)."""
        return self.rank, self.size


SINGLE = World()


def launched_world() -> World:
    """The world ``torchrun`` describes in the environment (a single process when it describes none)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def joined(device_type: str) -> Iterator[World]:
    """Join the process group of the world ``torchrun`` launched, for the ``with`` block (and leave it after); a
    single process joins nothing. NCCL for CUDA, gloo for the CPU."""
    world = launched_world()
    if world.size == 1 or dist.is_initialized():
        yield world
        return
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def average_gradients(params: Iterable[torch.Tensor], world: World) -> None:
    """All-reduce the gradients of ``params`` to their mean over ranks, in flat buckets of :data:`BUCKET_BYTES`.
    Parameters without a gradient are skipped; every rank must have gradients for the same ones (the sampler plans
    the same members on every rank), which is checked: a mismatch would sum unrelated tensors."""
    if world.size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    count = torch.tensor([len(grads), -len(grads)], dtype=torch.int64)
    sum_over_ranks(count, op=dist.ReduceOp.MAX)
    if count[0] != -count[1]:
        raise RuntimeError(f"rank {world.rank} has gradients for {len(grads)} parameter tensors, another rank for "
                           f"{int(count[0]) if count[0] != len(grads) else -int(count[1])}: every rank must run the "
                           "same members in each pass (does the sampler draw from the batch's contents?)")
    _average_in_place(grads, world)


def _average_in_place(tensors: list[torch.Tensor], world: World) -> None:
    """Replace each of ``tensors`` by its mean over ranks, one all-reduce per bucket."""
    for bucket in _buckets(tensors):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat)
        flat.div_(world.size)
        for t, part in zip(bucket, flat.split([t.numel() for t in bucket])):
            t.copy_(part.view(t.shape))


def _buckets(grads: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """``grads`` in consecutive groups of one dtype and device and at most :data:`BUCKET_BYTES` (or one tensor)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        nbytes = g.numel() * g.element_size()
        if bucket and (size + nbytes > BUCKET_BYTES or (g.dtype, g.device) != (bucket[0].dtype, bucket[0].device)):
            yield bucket
            bucket, size = [], 0
        bucket.append(g)
        size += nbytes
    if bucket:
        yield bucket


def average_batchnorm_statistics(model: nn.Module, world: World) -> None:
    """Set every BatchNorm's running mean and variance to their mean over ranks (each rank saw its own shards)."""
    if world.size == 1:
        return
    _average_in_place([t for bn in batchnorm_layers(model) for t in (bn.running_mean, bn.running_var)], world)


def broadcast_state(module: nn.Module, world: World) -> None:
    """Give every rank rank 0's parameters and buffers (after initialisation and ``prepare``, which every rank
    computes the same way, so this only guards against a component that drew differently)."""
    if world.size == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def mean_over_ranks(values: dict[str, float], world: World) -> dict[str, float]:
    """The mean over ranks of each value (every rank has the same keys): the logged loss of a step is the mean of its
    ranks' shard losses, as it is the loss of the global batch."""
    if world.size == 1 or not values:
        return dict(values)
    keys = sorted(values)
    flat = sum_over_ranks(torch.tensor([values[k] for k in keys], dtype=torch.float64))
    return {k: v / world.size for k, v in zip(keys, flat.tolist())}


def sum_over_ranks(flat: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """``flat`` summed (or reduced by ``op``) over ranks, in place; a CPU tensor goes through the GPU under NCCL,
    which reduces CUDA tensors only."""
    if flat.is_cpu and dist.get_backend() == "nccl":
        on_gpu = flat.cuda()
        dist.all_reduce(on_gpu, op=op)
        return flat.copy_(on_gpu)
    dist.all_reduce(flat, op=op)
    return flat


def from_main(value: Any, world: World) -> Any:
    """Rank 0's ``value`` on every rank (a small picklable object)."""
    if world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def quiet_unless_main(world: World) -> Iterator[None]:
    """Silence this process's output (stdout, stderr, warnings) unless it is rank 0, which says it all once; an error
    raised in the block is still reported after it."""
    if world.main:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def synced_batchnorm(world: World) -> Iterator[None]:
    """Within the block, every batch normalisation in training mode uses the statistics of the global batch (all
    ranks' shards) instead of its shard's, for every BatchNorm layer, however a method subclasses it: the calls to
    ``torch.nn.functional.batch_norm`` are intercepted (a ``TorchFunctionMode``), so no module is replaced. Means and
    centred sums of squares go through autograd-aware all-reduces, so activations, gradients and running statistics
    equal those of one process on the global batch (within float rounding), on CPU (gloo) and CUDA (NCCL) alike."""
    if world.size == 1:
        yield
        return
    with _SyncBatchNormMode():
        yield


class _SyncBatchNormMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
            bound.apply_defaults()
            if bound.arguments["training"]:
                return _global_batch_norm(**{k: v for k, v in bound.arguments.items() if k != "training"})
        return func(*args, **kwargs)


def _global_batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                       weight: torch.Tensor | None, bias: torch.Tensor | None, momentum: float,
                       eps: float) -> torch.Tensor:
    """``F.batch_norm(..., training=True)`` over the union of every rank's ``input`` (statistics in float32)."""
    from torch.distributed.nn.functional import all_reduce

    dims = [d for d in range(input.dim()) if d != 1]
    shape = [1, -1] + [1] * (input.dim() - 2)
    x = input.float()
    total = all_reduce(torch.cat([x.sum(dims), x.new_tensor([x.numel() // x.shape[1]])]))
    n = total[-1]
    mean = total[:-1] / n
    centred = x - mean.view(shape)
    var = all_reduce(centred.square().sum(dims)) / n
    with torch.no_grad():
        if running_mean is not None:
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
        if running_var is not None:
            running_var.lerp_((var * n / (n - 1)).to(running_var.dtype), momentum)
    out = centred * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out.to(input.dtype)


_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)
