"""Datasets as uint8 images (held in memory, or decoded from files per batch), and seeded batch iteration over them.

A split is uint8 images and int64 labels: two tensors in memory (:class:`Split`), or, for an
``imagefolder`` too large for memory, image files decoded when a batch needs them
(:class:`FileSplit`, ``stream=True``). Batching, augmentation and normalisation happen on
tensors per batch, which is fast on CPU and makes the batch order and augmentation a pure
function of ``(seed, epoch)``: a resumed run sees exactly the batches an uninterrupted run
would have seen. The random numbers of an epoch are drawn in this process, batch by batch;
the batches themselves may be assembled (decoded, cropped, flipped) by ``DataLoader``
worker processes, which changes nothing in them.

Known dataset names (see :func:`load_dataset`): ``fashion-mnist`` (the project default),
``cifar10``, ``cifar100``, ``svhn``, ``digits``, ``fake`` / ``fake:C:H:W:K`` and
``imagefolder:PATH``.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the IDX files."""

IMAGEFOLDER_SIZE = (32, 32)
"""(H, W) every ``imagefolder:`` image is resized to."""

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Published per-channel statistics of the raw [0, 1] training pixels.
PUBLISHED_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

FAKE_DEFAULT_SHAPE = (1, 28, 28, 10)  # C, H, W, K
FAKE_SIZES = (512, 128)  # train, test
_FAKE_DATA_SEED = 0  # the fake data is a fixed dataset; the run seed only picks subsets
_DIGITS_SPLIT_SEED = 0  # likewise, the digits train/test split is fixed


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the training loop need to know about a dataset."""

    name: str
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, of the raw [0, 1] pixels
    std: tuple[float, ...]
    class_names: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Split:
    """One split held in memory: uint8 images (N, C, H, W) and int64 labels (N,).

    ``cut_from`` is the size of the split these images were drawn from (by ``subset`` or
    ``val_split``), None when this is the whole split.
    """

    images: torch.Tensor
    labels: torch.Tensor
    cut_from: int | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 (N,) matching the images, got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images at ``idx``."""
        return self.images[idx]

    def select(self, idx: torch.Tensor) -> Split:
        """The images at ``idx``, kept in their original order (a seeded subset or validation cut)."""
        idx = idx.sort().values
        return Split(self.images[idx], self.labels[idx], cut_from=len(self) if len(idx) < len(self) else None)


@dataclass(frozen=True, eq=False)
class FileSplit:
    """One split left on disk: image files, decoded (RGB, resized to IMAGEFOLDER_SIZE) when a batch needs them,
    exactly as :class:`Split` holds them in memory; int64 labels (N,). ``cut_from`` as in :class:`Split`."""

    paths: tuple[str, ...]
    labels: torch.Tensor
    cut_from: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images at ``idx``, decoded now."""
        return torch.stack([_decode_image(self.paths[i]) for i in idx.tolist()])

    def select(self, idx: torch.Tensor) -> FileSplit:
        """The images at ``idx``, kept in their original order (a seeded subset or validation cut)."""
        idx = idx.sort().values
        return FileSplit(tuple(self.paths[i] for i in idx.tolist()), self.labels[idx],
                         cut_from=len(self) if len(idx) < len(self) else None)


AnySplit = Split | FileSplit


@dataclass(frozen=True)
class Augmentation:
    """Train augmentation: random crop after zero padding, optional h-flip, and random erasing: with probability
    ``erase_prob`` an image has one rectangle of 2-40% of its area (aspect ratio 0.3-3.3, log-uniform) replaced by
    uniform noise (Zhong et al., *Random Erasing Data Augmentation*, AAAI 2020; its defaults)."""

    crop_pad: int = 0
    hflip: bool = False
    erase_prob: float = 0.0


ERASE_AREA = (0.02, 0.4)  # fraction of the image a random erasing rectangle covers
ERASE_ASPECT = (0.3, 1 / 0.3)  # its height / width


# The per-dataset train augmentation, keyed by dataset family (the name before any ':').
AUGMENTATIONS: dict[str, Augmentation] = {
    "fashion-mnist": Augmentation(crop_pad=2, hflip=True),
    "cifar10": Augmentation(crop_pad=4, hflip=True),
    "cifar100": Augmentation(crop_pad=4, hflip=True),
    "svhn": Augmentation(crop_pad=4),  # flipped digits are other digits
    "digits": Augmentation(),  # 8x8 images: even a 1px shift moves 12% of the digit and hurts short runs
    "fake": Augmentation(),  # the label lives in a fixed patch position
    "imagefolder": Augmentation(crop_pad=4, hflip=True),
}

_Loaded = tuple[DatasetInfo, Split, Split]  # info, train, test

# Independent random streams of one seed (see _generator).
_TRAIN_SUBSET_STREAM, _TEST_SUBSET_STREAM, _EPOCH_STREAM = 0, 1, 2


# --------------------------------------------------------------------------- public API


def load_dataset(name: str, *, root: str | None = None, subset: int | None = None, val_split: float = 0.0,
                 seed: int = 0, stream: bool = False, workers: int = 0) -> tuple[DatasetInfo, dict[str, AnySplit]]:
    """Load dataset ``name`` into memory (or, with ``stream``, list its files) and return its info and splits.

    Returns ``{"train", "test"}`` splits, plus ``"val"`` when ``val_split > 0``.
    ``subset=N`` keeps a seeded random N of train and ``min(len(test), max(N // 5, 100))``
    of test (for quick runs; the cut of the test set is printed, and recorded as the test
    split's ``cut_from``). A ``subset`` larger than the training set is a ValueError, not
    a silent cut. ``val_split=f`` holds out a seeded random fraction ``f`` of
    (the subset of) train as ``"val"``. ``root`` is where to look for / download the data
    (default ``$SELFENS_DATA`` or ``~/.cache/selfens/data``). ``info.mean``/``info.std`` are
    always those of the full training set, so they do not depend on ``subset``/``seed``.
    ``stream=True`` (``imagefolder`` only) keeps the images on disk (:class:`FileSplit`):
    they are decoded once by ``workers`` processes for ``info.mean``/``info.std``, then
    per batch.
    """
    _check_split_args(subset, val_split)
    family, arg = _parse_name(name)
    if stream and family != "imagefolder":
        raise ValueError(f"stream=True (data.stream) reads imagefolder:PATH datasets from disk; {name!r} is held in "
                         "memory, leave data.stream false")
    info, train, test = (_load_imagefolder(name, arg, root, stream=True, workers=workers) if stream
                         else _LOADERS[family](name, arg, root))
    if subset is not None and subset > len(train):
        raise ValueError(f"subset={subset} (data.subset) is more than the {len(train)} training images of "
                         f"{name!r}; use at most {len(train)}, or no subset (data.subset=null) for all of them")
    return info, _make_splits(train, test, subset=subset, val_split=val_split, seed=seed)


def iterate_batches(split: AnySplit, info: DatasetInfo, *, batch_size: int, train: bool,
                    augment: bool, seed: int, epoch: int, drop_last: bool = False, erase_prob: float = 0.0,
                    workers: int = 0, shard: tuple[int, int] = (0, 1),
                    pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches: x float32 (B, C, H, W) normalised with ``info``, y int64.

    ``train=True`` shuffles, and (if ``augment``) applies the dataset's standard
    augmentation from :data:`AUGMENTATIONS`, with random erasing at ``erase_prob`` (see :class:`Augmentation`), all
    drawn from one generator seeded from ``(seed, epoch)``, so the batches are a pure function of ``(seed, epoch)``.
    ``train=False`` goes in order and never augments (``augment`` is ignored).
    ``workers`` > 0 assembles the batches (decoding a :class:`FileSplit`'s files, cropping,
    flipping) in that many ``DataLoader`` processes; the batches are the same.
    ``shard=(rank, size)`` yields only rank ``rank``'s contiguous part of every batch (:func:`shard_slice`; the batch
    order and augmentation are drawn for the whole batch, so the ranks' parts together are the one-process batch).
    ``pin_memory`` yields batches in page-locked memory, which a CUDA copy with ``non_blocking=True`` overlaps.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)
    gen = _generator(seed, _EPOCH_STREAM, epoch) if train else None
    order = torch.randperm(len(split), generator=gen) if train else torch.arange(len(split))
    if not 0.0 <= erase_prob <= 1.0:
        raise ValueError(f"erase_prob must be in [0, 1], got {erase_prob}")
    aug = dataclasses.replace(augmentation_for(info), erase_prob=erase_prob) if train and augment else None
    plan = _batch_plan(order, num_batches(split, batch_size, drop_last), batch_size, aug, gen, shard,
                       info.input_size)
    for images, labels in _assembled(split, plan, aug, workers):
        images = images.float().div_(255.0).sub_(mean).div_(std)
        yield (images.pin_memory(), labels.pin_memory()) if pin_memory else (images, labels)


def shard_slice(batch: int, rank: int, size: int) -> slice:
    """The rows of a batch of ``batch`` images that rank ``rank`` of ``size`` takes: contiguous, as equal as can be
    (the first ``batch % size`` ranks take one more; training batches divide evenly, the engine checks)."""
    base, extra = divmod(batch, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def num_batches(split: AnySplit, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`iterate_batches` yields for ``split``.

    ``drop_last=True`` is how training batches: a split smaller than one batch would give
    epochs of no step and an untrained model, so it is a ValueError saying what to change.
    """
    if drop_last and 0 < len(split) < batch_size:
        raise ValueError(f"the training split has {len(split)} images, fewer than one batch of {batch_size} "
                         f"(train.batch_size), so no training step would run; set train.batch_size to at most "
                         f"{len(split)}, or train on more images (a larger data.subset, a smaller data.val_split)")
    return len(split) // batch_size if drop_last else math.ceil(len(split) / batch_size)


def augmentation_for(info: DatasetInfo) -> Augmentation:
    """The standard train augmentation of the dataset ``info`` describes."""
    return AUGMENTATIONS[_parse_name(info.name)[0]]


# ------------------------------------------------------------------ splitting and batching


def _check_split_args(subset: int | None, val_split: float) -> None:
    """Reject a non-positive subset and a val fraction outside [0, 1)."""
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive number of images, got {subset}")
    if not 0.0 <= val_split < 1.0:
        raise ValueError(f"val_split must be in [0, 1), got {val_split}")


def _make_splits(train: AnySplit, test: AnySplit, *, subset: int | None, val_split: float,
                 seed: int) -> dict[str, AnySplit]:
    """Apply ``subset`` and ``val_split`` (both seeded) to the full train/test splits."""
    if subset is None and val_split == 0.0:
        return {"train": train, "test": test}
    keep = torch.randperm(len(train), generator=_generator(seed, _TRAIN_SUBSET_STREAM))[:subset]
    n_val = min(max(1, round(val_split * len(keep))), len(keep) - 1) if val_split else 0
    splits = {"train": train.select(keep[n_val:])}
    if n_val:
        splits["val"] = train.select(keep[:n_val])
    if subset is None:
        splits["test"] = test
    else:
        n_test = min(len(test), max(subset // 5, 100))
        test_gen = _generator(seed, _TEST_SUBSET_STREAM)
        splits["test"] = test.select(torch.randperm(len(test), generator=test_gen)[:n_test])
        if n_test < len(test):  # announced: a test accuracy on a cut test set must not pass for the full one
            print(f"test set cut to {n_test} of {len(test)} images by data.subset={subset} (N // 5, at least 100, "
                  f"seeded) to keep a quick run quick; without a subset (data.subset=null) all {len(test)} are "
                  "evaluated",
                  file=sys.stderr)
    return splits


def _generator(seed: int, *stream: int) -> torch.Generator:
    """A torch generator for one independent random stream of ``seed`` (e.g. one epoch)."""
    state = np.random.SeedSequence(seed, spawn_key=stream).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


class _Draws(NamedTuple):
    """The random numbers of one batch's augmentation, each with the batch as its first dimension."""

    offsets: torch.Tensor | None  # (N, 2, 1): each image's crop offsets dy, dx
    flips: torch.Tensor | None  # (N,) bool: which images are flipped
    erase_boxes: torch.Tensor | None  # (N, 4): each image's erased rectangle top, left, height, width (0: none)
    erase_noise: torch.Tensor | None  # (N, C, H, W) uint8: what the rectangle is filled with

    def part(self, rows: slice) -> _Draws:
        """The draws of the images ``rows`` of the batch."""
        return _Draws(*(None if t is None else t[rows] for t in self))


def _draw(aug: Augmentation, n: int, gen: torch.Generator, shape: tuple[int, int, int]) -> _Draws:
    """Draw one batch's augmentation of ``n`` images of ``shape`` (C, H, W) from ``gen``: crop offsets, flips, then
    erasing (a fixed order; an augmentation that is off draws nothing)."""
    offsets = torch.randint(0, 2 * aug.crop_pad + 1, (2, n, 1), generator=gen).transpose(0, 1) if aug.crop_pad else None
    flips = torch.rand(n, generator=gen) < 0.5 if aug.hflip else None
    boxes = noise = None
    if aug.erase_prob:
        _, h, w = shape
        area = torch.empty(n).uniform_(*ERASE_AREA, generator=gen) * h * w
        aspect = torch.empty(n).uniform_(math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]), generator=gen).exp()
        height = (area * aspect).sqrt().round().clamp(1, h)
        width = (area / aspect).sqrt().round().clamp(1, w)
        top = (torch.rand(n, generator=gen) * (h - height + 1)).floor()
        left = (torch.rand(n, generator=gen) * (w - width + 1)).floor()
        erased = torch.rand(n, generator=gen) < aug.erase_prob
        boxes = (torch.stack([top, left, height, width], 1) * erased.unsqueeze(1)).long()
        noise = torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)
    return _Draws(offsets, flips, boxes, noise)


def _augment(images: torch.Tensor, aug: Augmentation, draws: _Draws) -> torch.Tensor:
    """Crop (after zero padding), flip and erase a uint8 batch as ``draws`` say, vectorised over the batch."""
    if draws.offsets is not None:
        images = _crop(images, aug.crop_pad, draws.offsets)
    if draws.flips is not None:
        images = torch.where(draws.flips.view(-1, 1, 1, 1), images.flip(-1), images)
    if draws.erase_boxes is not None:
        images = torch.where(_box_masks(draws.erase_boxes, *images.shape[-2:]), draws.erase_noise, images)
    return images


def _box_masks(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 1, H, W) bool: True inside each image's rectangle ``boxes`` (N, 4) = top, left, height, width."""
    top, left, height, width = (c.view(-1, 1, 1, 1) for c in boxes.unbind(1))
    rows = torch.arange(h).view(1, 1, -1, 1)
    cols = torch.arange(w).view(1, 1, 1, -1)
    return (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)


def _crop(images: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``pad`` pixels and cut each image back to size at its offset."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)).permute(0, 2, 3, 1)
    dy, dx = offsets.unbind(1)
    rows = (dy + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx + torch.arange(w))[:, None, :]  # (N, 1, W)
    crops = padded[torch.arange(n).view(-1, 1, 1), rows, cols]  # (N, H, W, C)
    return crops.permute(0, 3, 1, 2).contiguous()


_Plan = Iterator[tuple[torch.Tensor, _Draws | None]]  # per batch: indices, augmentation draws


def _batch_plan(order: torch.Tensor, count: int, batch_size: int, aug: Augmentation | None,
                gen: torch.Generator | None, shard: tuple[int, int], shape: tuple[int, int, int]) -> _Plan:
    """The first ``count`` batches of ``order``: each one's indices and augmentation draws, drawn from ``gen`` as
    the batch comes (so however far ahead workers are fed, every batch gets the numbers of its place); with
    ``shard``, the rank's part of each."""
    for start in range(0, count * batch_size, batch_size):
        idx = order[start:start + batch_size]
        draws = None if aug is None else _draw(aug, len(idx), gen, shape)
        if shard[1] > 1:
            part = shard_slice(len(idx), *shard)
            idx = idx[part]
            draws = None if draws is None else draws.part(part)
        yield idx, draws


class _Assemble(Dataset):
    """What a ``DataLoader`` worker does: the uint8 images and labels of one planned batch, augmented."""

    def __init__(self, split: AnySplit, aug: Augmentation | None):
        self.split, self.aug = split, aug

    def __getitem__(self, planned: tuple[torch.Tensor, _Draws | None]) -> tuple[torch.Tensor, torch.Tensor]:
        idx, draws = planned
        images = self.split.load(idx)
        return (images if draws is None else _augment(images, self.aug, draws)), self.split.labels[idx]


def _assembled(split: AnySplit, plan: _Plan, aug: Augmentation | None,
               workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The planned batches (uint8 images, labels) in order: assembled here, or by ``workers`` processes. The
    loader's own generator seeds its workers (which draw nothing), so the global RNG is left alone: reading data the
    one way or the other never changes a run."""
    assemble = _Assemble(split, aug)
    if not workers:
        return map(assemble.__getitem__, plan)
    return iter(DataLoader(assemble, batch_size=None, sampler=plan, num_workers=workers, generator=torch.Generator()))


# ---------------------------------------------------------------------------- helpers


def _parse_name(name: str) -> tuple[str, str | None]:
    """Split ``family[:arg]`` and check the family is known."""
    family, sep, arg = name.partition(":")
    takes_arg = family in ("fake", "imagefolder")
    if family not in _LOADERS or (sep and not takes_arg) or (family == "imagefolder" and not arg):
        known = ", ".join(sorted(set(_LOADERS) - {"imagefolder"}))
        raise ValueError(f"unknown dataset {name!r}; known: {known} "
                         "(also fake:C:H:W:K), and imagefolder:PATH for your own images")
    return family, (arg if sep else None)


def _default_data_dir(root: str | None) -> Path:
    """Where torchvision datasets are looked for and downloaded to."""
    return Path(root or os.environ.get("SELFENS_DATA") or "~/.cache/selfens/data").expanduser()


def _channel_stats(split: AnySplit, workers: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of the split's uint8 images in [0, 1], via value histograms summed over chunks
    of images (a :class:`FileSplit` is decoded once for them, by ``workers`` processes).

    The histograms avoid a float copy of the whole training set (≈190 MB for
    Fashion-MNIST). A zero std (constant images) is reported as 1 to keep division safe.
    """
    chunks = _assembled(split, ((idx, None) for idx in torch.arange(len(split)).split(1024)), None, workers)
    counts = sum(torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256)
                              for c in range(images.shape[1])]) for images, _ in chunks)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in counts:
        freq = channel.double()
        freq /= freq.sum()
        mean = float((freq * values).sum())
        var = float((freq * values.square()).sum()) - mean**2
        means.append(mean)
        stds.append(math.sqrt(var) if var > 1e-12 else 1.0)
    return tuple(means), tuple(stds)


def _make_info(name: str, train: AnySplit, class_names: tuple[str, ...],
               stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None, workers: int = 0) -> DatasetInfo:
    """Build the info of a dataset; ``stats`` defaults to those of the training images."""
    c, h, w = train.load(torch.zeros(1, dtype=torch.int64)).shape[1:]
    mean, std = stats or _channel_stats(train, workers)
    return DatasetInfo(name=name, num_classes=len(class_names), in_chans=c, input_size=(c, h, w),
                       mean=mean, std=std, class_names=class_names)


def _split_from_numpy(images: np.ndarray, labels: np.ndarray | list[int],
                      channels_last: bool) -> Split:
    """A :class:`Split` from numpy uint8 images (NHWC or NCHW) and integer labels."""
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if channels_last:
        tensor = tensor.permute(0, 3, 1, 2).contiguous()
    return Split(tensor, torch.as_tensor(np.asarray(labels), dtype=torch.int64))


# ----------------------------------------------------------------------- fashion-mnist


def _read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes (the MNIST format) into an array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    # copy: frombuffer views the read-only bytes, and torch wants writable memory
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def _fashion_mnist_dirs(root: str | None) -> list[Path]:
    """Folders that may hold the four Fashion-MNIST IDX files, in search order."""
    dirs = [Path(root).expanduser(), Path(root).expanduser() / "fashion-mnist"] if root else []
    if os.environ.get("SELFENS_DATA"):
        dirs.append(Path(os.environ["SELFENS_DATA"]).expanduser() / "fashion-mnist")
    return dirs + [SYSTEM_FASHION_MNIST_DIR]


def _fashion_mnist_from_idx(folder: Path) -> tuple[Split, Split]:
    """Read the train and test splits from the IDX files in ``folder``."""
    splits = []
    for images_file, labels_file in FASHION_MNIST_FILES.values():
        images = _read_idx(folder / images_file)[:, None]
        splits.append(_split_from_numpy(images, _read_idx(folder / labels_file), False))
    return splits[0], splits[1]


def _fashion_mnist_from_torchvision(root: str | None, tried: list[Path]) -> tuple[Split, Split]:
    """Last resort: let torchvision find or download Fashion-MNIST under the data dir."""
    from torchvision import datasets

    target = _default_data_dir(root)
    try:
        sets = [datasets.FashionMNIST(root=str(target), train=t, download=True)
                for t in (True, False)]
    except Exception as err:  # download errors come as many types (URLError, OSError, ...)
        looked = ", ".join(str(p) for p in tried)
        raise FileNotFoundError(
            f"fashion-mnist not found: no IDX files (train-images-idx3-ubyte.gz, ...) in {looked}, "
            f"and the torchvision download to {target} failed ({err}). "
            "Install them with `apt-get install dataset-fashion-mnist`, or put the four "
            "*-ubyte.gz files in a folder and point data.root or $SELFENS_DATA at it."
        ) from err
    train, test = (Split(s.data[:, None].to(torch.uint8).contiguous(), s.targets.long())
                   for s in sets)
    return train, test


def _load_fashion_mnist(name: str, arg: str | None, root: str | None) -> _Loaded:
    """Fashion-MNIST from the first folder with its IDX files, else via torchvision."""
    dirs = _fashion_mnist_dirs(root)
    files = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
    found = next((d for d in dirs if all((d / f).is_file() for f in files)), None)
    if found:
        train, test = _fashion_mnist_from_idx(found)
    else:
        train, test = _fashion_mnist_from_torchvision(root, dirs)
    return _make_info(name, train, FASHION_MNIST_CLASSES), train, test


# ------------------------------------------------------------------ torchvision datasets


def _torchvision_sets(name: str, cls_name: str, root: str | None, split_kwargs: list[dict]) -> list:
    """Instantiate a torchvision dataset class once per split, downloading if needed."""
    from torchvision import datasets

    target = _default_data_dir(root)
    try:
        dataset_class = getattr(datasets, cls_name)
        return [dataset_class(root=str(target), download=True, **kw) for kw in split_kwargs]
    except Exception as err:  # download errors come as many types (URLError, OSError, ...)
        raise FileNotFoundError(
            f"{name} not found in {target} and could not be downloaded there ({err}). "
            f"Put torchvision's {cls_name} files in that folder, or point data.root or "
            "$SELFENS_DATA at a folder that has them."
        ) from err


def _load_cifar(name: str, arg: str | None, root: str | None) -> _Loaded:
    """CIFAR-10/100 via torchvision (``.data`` is NHWC uint8, ``.targets`` a list)."""
    cls_name = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[name]
    sets = _torchvision_sets(name, cls_name, root, [{"train": True}, {"train": False}])
    train, test = (_split_from_numpy(s.data, s.targets, channels_last=True) for s in sets)
    return _make_info(name, train, tuple(sets[0].classes), PUBLISHED_STATS[name]), train, test


def _load_svhn(name: str, arg: str | None, root: str | None) -> _Loaded:
    """SVHN (cropped digits) via torchvision (``.data`` is NCHW uint8, ``.labels`` 0..9)."""
    sets = _torchvision_sets(name, "SVHN", root, [{"split": "train"}, {"split": "test"}])
    train, test = (_split_from_numpy(s.data, s.labels, channels_last=False) for s in sets)
    classes = tuple(str(d) for d in range(10))
    return _make_info(name, train, classes, PUBLISHED_STATS[name]), train, test


# ------------------------------------------------------------------ bundled / synthetic


def _load_digits(name: str, arg: str | None, root: str | None) -> _Loaded:
    """scikit-learn's 8x8 digits (values 0..16 scaled to 0..255), fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    train_idx, test_idx = train_test_split(np.arange(len(images)), test_size=0.2,
                                           random_state=_DIGITS_SPLIT_SEED, stratify=digits.target)
    train, test = (_split_from_numpy(images[np.sort(i)], digits.target[np.sort(i)], False)
                   for i in (train_idx, test_idx))
    return _make_info(name, train, tuple(str(d) for d in range(10))), train, test


def _parse_fake_shape(name: str, arg: str | None) -> tuple[int, int, int, int]:
    """``fake`` -> the default shape; ``fake:C:H:W:K`` -> (C, H, W, K)."""
    if arg is None:
        return FAKE_DEFAULT_SHAPE
    try:
        c, h, w, k = (int(part) for part in arg.split(":"))
    except ValueError:
        raise ValueError(f"bad fake dataset name {name!r}; expected fake:C:H:W:K, "
                         "e.g. fake:3:32:32:10") from None
    if min(c, h, w) < 1 or k < 2:
        raise ValueError(f"bad fake dataset name {name!r}: sizes must be >= 1 and K >= 2")
    return c, h, w, k


def _fake_split(shape: tuple[int, int, int, int], n: int, gen: torch.Generator) -> Split:
    """Noise images in [0, 128) where class k adds 127 to its own cell of a grid.

    The class is visible as *where* a bright patch is, so even a linear model learns it
    quickly, which makes the fake data useful for end-to-end tests that check learning.
    """
    c, h, w, k = shape
    grid = math.ceil(math.sqrt(k))
    cell_h, cell_w = h // grid, w // grid
    if not (cell_h and cell_w):
        raise ValueError(f"fake images of {h}x{w} are too small to give {k} classes a patch each")
    labels = torch.randint(k, (n,), generator=gen)
    images = torch.randint(0, 128, (n, c, h, w), generator=gen, dtype=torch.uint8)
    top, left = (labels // grid * cell_h)[:, None], (labels % grid * cell_w)[:, None]
    in_rows = (torch.arange(h) >= top) & (torch.arange(h) < top + cell_h)  # (N, H)
    in_cols = (torch.arange(w) >= left) & (torch.arange(w) < left + cell_w)  # (N, W)
    patch = (in_rows[:, :, None] & in_cols[:, None, :]).to(torch.uint8) * 127
    return Split(images + patch[:, None], labels)


def _load_fake(name: str, arg: str | None, root: str | None) -> _Loaded:
    """A fixed synthetic dataset (512 train / 128 test) of learnable random images."""
    shape = _parse_fake_shape(name, arg)
    gen = torch.Generator().manual_seed(_FAKE_DATA_SEED)
    train, test = (_fake_split(shape, n, gen) for n in FAKE_SIZES)
    return _make_info(name, train, tuple(f"class{i}" for i in range(shape[3]))), train, test


# -------------------------------------------------------------------------- imagefolder


def _read_image_folder(folder: Path, classes: list[str] | None = None,
                       stream: bool = False) -> tuple[AnySplit, list[str]]:
    """Load every image under ``folder/<class>/`` as RGB, resized to IMAGEFOLDER_SIZE; with ``stream``, only list
    them (a :class:`FileSplit` decodes them per batch).

    A folder without class sub-folders, a class folder without images and an image that
    does not decode (when it is decoded) are errors naming the folder or file.
    """
    from torchvision import datasets
    from torchvision.datasets.folder import IMG_EXTENSIONS

    expected = f"expected {folder}/<class>/ sub-folders, each holding images ({' '.join(IMG_EXTENSIONS)})"
    if not any(entry.is_dir() for entry in folder.iterdir()):
        raise FileNotFoundError(f"imagefolder: {folder} has no class sub-folders; {expected}")
    ds = datasets.ImageFolder(str(folder), allow_empty=True)
    empty = sorted(set(ds.classes) - {ds.classes[t] for t in ds.targets})
    if empty:
        raise FileNotFoundError(f"imagefolder: class folder(s) {', '.join(str(folder / c) for c in empty)} hold no "
                                f"images; {expected}. Add images, or remove the empty folder(s) (from every split)")
    if classes is not None and ds.classes != classes:
        raise ValueError(f"{folder} has classes {ds.classes}, but the train folder has {classes}")
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    paths = tuple(path for path, _ in ds.samples)
    if stream:
        return FileSplit(paths, labels), ds.classes
    return Split(torch.stack([_decode_image(path) for path in paths]), labels), ds.classes


def _decode_image(path: str) -> torch.Tensor:
    """One image file as uint8 (3, H, W): RGB, resized to IMAGEFOLDER_SIZE. A file that does not decode is a
    ValueError naming it."""
    from torchvision import transforms
    from torchvision.datasets.folder import default_loader

    try:
        return transforms.PILToTensor()(transforms.Resize(IMAGEFOLDER_SIZE)(default_loader(path)))
    except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise ValueError(f"imagefolder: cannot read the image {path} ({type(err).__name__}: {err}); "
                         "replace or remove the file") from err


def _load_imagefolder(name: str, arg: str | None, root: str | None, stream: bool = False,
                      workers: int = 0) -> _Loaded:
    """Your own images: ``PATH/train/<class>/*`` and ``PATH/val`` (or ``PATH/test``).

    Every image is decoded, converted to RGB, resized to IMAGEFOLDER_SIZE (32x32) and
    kept in memory as uint8, which suits small folders (thousands of images), not
    ImageNet-sized ones: for those, ``stream`` lists the files, and batches decode them
    (``workers`` processes decode the training images once for their mean and std).
    ``root`` is not used: PATH says where the images are.
    """
    base = Path(arg).expanduser()
    evals = [base / s for s in ("val", "test") if (base / s).is_dir()]
    if not (base / "train").is_dir() or not evals:
        raise FileNotFoundError(f"imagefolder: expected {base}/train/<class>/ and {base}/val/ "
                                f"(or {base}/test/) with images; {base} does not have them")
    train, classes = _read_image_folder(base / "train", stream=stream)
    test, _ = _read_image_folder(evals[0], classes, stream=stream)
    return _make_info(name, train, tuple(classes), workers=workers), train, test


_LOADERS: dict[str, Callable[[str, str | None, str | None], _Loaded]] = {
    "fashion-mnist": _load_fashion_mnist,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "svhn": _load_svhn,
    "digits": _load_digits,
    "fake": _load_fake,
    "imagefolder": _load_imagefolder,
}
