"""Tests of selfens_core.data: loading, subsets, seeded batching and augmentation.

Only Fashion-MNIST is read from disk (the Debian package `dataset-fashion-mnist`);
the torchvision datasets are replaced by tiny fakes with the same attributes, since they
cannot be downloaded in the test environment.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from selfens_core import data
from selfens_core.data import DatasetInfo, Split, iterate_batches, load_dataset, num_batches

FMNIST_FILES = [f for pair in data.FASHION_MNIST_FILES.values() for f in pair]


def _fashion_mnist_installed() -> bool:
    return all((data.SYSTEM_FASHION_MNIST_DIR / f).is_file() for f in FMNIST_FILES)


needs_fmnist = pytest.mark.skipif(not _fashion_mnist_installed(),
                                  reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def fmnist_small() -> tuple[DatasetInfo, dict[str, Split]]:
    """A Fashion-MNIST subset with a val split, loaded once for several tests."""
    if not _fashion_mnist_installed():
        pytest.skip("apt-get install dataset-fashion-mnist")
    return load_dataset("fashion-mnist", subset=1000, val_split=0.2, seed=3)


@pytest.fixture
def no_fmnist_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide the system copy and $SELFENS_DATA, so only the test's root counts."""
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-copy")
    monkeypatch.delenv("SELFENS_DATA", raising=False)


def _batches(split: Split, info: DatasetInfo, **kw) -> list[tuple[torch.Tensor, torch.Tensor]]:
    args = dict(batch_size=64, train=True, augment=True, seed=0, epoch=0) | kw
    return list(iterate_batches(split, info, **args))


def _image_set(split: Split) -> set[bytes]:
    return {img.numpy().tobytes() for img in split.images}


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


# ---------------------------------------------------------------------- fashion-mnist


@needs_fmnist
def test_fashion_mnist_full() -> None:
    info, splits = load_dataset("fashion-mnist")
    assert set(splits) == {"train", "test"}
    assert splits["train"].images.shape == (60000, 1, 28, 28)
    assert splits["test"].images.shape == (10000, 1, 28, 28)
    assert splits["train"].images.dtype == torch.uint8
    assert splits["train"].labels.dtype == torch.int64
    assert set(splits["test"].labels.tolist()) == set(range(10))
    assert (info.name, info.num_classes, info.in_chans) == ("fashion-mnist", 10, 1)
    assert info.input_size == (1, 28, 28)
    assert info.class_names[0] == "T-shirt/top" and info.class_names[-1] == "Ankle boot"
    assert info.mean[0] == pytest.approx(0.286, abs=1e-3)
    assert info.std[0] == pytest.approx(0.353, abs=1e-3)


def test_fashion_mnist_subset_and_val_sizes(fmnist_small) -> None:
    info, splits = fmnist_small
    assert {k: len(v) for k, v in splits.items()} == {"train": 800, "val": 200, "test": 200}
    assert info.mean[0] == pytest.approx(0.286, abs=1e-3)  # stats of the full train set


def test_fashion_mnist_read_from_root_idx_files(tmp_path: Path, no_fmnist_elsewhere: None) -> None:
    rng = np.random.default_rng(0)
    for (img_file, lbl_file), n in zip(data.FASHION_MNIST_FILES.values(), (30, 10)):
        _write_idx(tmp_path / img_file, rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / lbl_file, np.arange(n) % 10)
    info, splits = load_dataset("fashion-mnist", root=str(tmp_path))
    assert splits["train"].images.shape == (30, 1, 28, 28)
    assert splits["test"].labels.tolist() == list(range(10))
    assert info.num_classes == 10


def test_fashion_mnist_torchvision_fallback(monkeypatch, tmp_path: Path,
                                            no_fmnist_elsewhere: None) -> None:
    def fake_fmnist(root: str, train: bool, download: bool) -> SimpleNamespace:
        n = 20 if train else 5
        images = torch.zeros(n, 28, 28, dtype=torch.uint8)
        return SimpleNamespace(data=images, targets=torch.arange(n) % 10)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fmnist)
    _, splits = load_dataset("fashion-mnist", root=str(tmp_path))
    assert splits["train"].images.shape == (20, 1, 28, 28) and len(splits["test"]) == 5


def test_fashion_mnist_missing_gives_clear_error(monkeypatch, tmp_path: Path,
                                                 no_fmnist_elsewhere: None) -> None:
    def offline(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion-mnist", root=str(empty))
    message = str(err.value)
    assert str(empty) in message and "no network" in message
    assert "apt-get install dataset-fashion-mnist" in message and "SELFENS_DATA" in message


# --------------------------------------------------------------------------- splitting


def test_subset_and_val_are_seeded_and_disjoint() -> None:
    _, full = load_dataset("fake")
    _, a = load_dataset("fake", subset=300, val_split=0.25, seed=1)
    _, b = load_dataset("fake", subset=300, val_split=0.25, seed=1)
    _, c = load_dataset("fake", subset=300, val_split=0.25, seed=2)
    assert {k: len(v) for k, v in a.items()} == {"train": 225, "val": 75, "test": 100}
    assert not _image_set(a["train"]) & _image_set(a["val"])
    assert _image_set(a["train"]) | _image_set(a["val"]) <= _image_set(full["train"])
    assert _image_set(a["test"]) <= _image_set(full["test"])
    assert torch.equal(a["val"].images, b["val"].images)
    assert not torch.equal(a["val"].images, c["val"].images)


def test_val_split_without_subset_partitions_train() -> None:
    _, full = load_dataset("fake")
    _, splits = load_dataset("fake", val_split=0.25)
    assert (len(splits["train"]), len(splits["val"])) == (384, 128)
    assert _image_set(splits["train"]) | _image_set(splits["val"]) == _image_set(full["train"])
    assert torch.equal(splits["test"].images, full["test"].images)


def test_subset_larger_than_the_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match=r"subset=513 \(data.subset\) is more than the 512 training images of 'fake'; "
                                         r"use at most 512, or no subset \(data.subset=null\)"):
        load_dataset("fake", subset=513)
    _, splits = load_dataset("fake", subset=512)  # all of them is fine
    assert len(splits["train"]) == 512


def test_test_set_cut_by_subset_is_announced_and_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    _, splits = load_dataset("digits", subset=96)
    assert "test set cut to 100 of 360 images by data.subset=96" in capsys.readouterr().err
    assert (len(splits["test"]), splits["test"].cut_from) == (100, 360)
    assert (len(splits["train"]), splits["train"].cut_from) == (96, 1437)
    _, whole = load_dataset("digits", val_split=0.2)  # no subset: the test set is whole and nothing is announced
    assert "test set cut" not in capsys.readouterr().err
    assert whole["test"].cut_from is None and len(whole["test"]) == 360


def test_evaluation_records_the_cut_test_set() -> None:
    from selfens_core import create
    from selfens_core.evaluation import evaluate

    info, splits = load_dataset("digits", subset=96)
    model = create("hne-resnet-small", num_classes=info.num_classes, in_chans=info.in_chans)
    metrics = evaluate(model, splits["test"], info, flops=False)
    assert (metrics["num_samples"], metrics["num_samples_of"]) == (100, 360)
    _, whole = load_dataset("digits")
    assert "num_samples_of" not in evaluate(model, whole["test"], info, flops=False)


def test_training_split_smaller_than_one_batch_is_refused() -> None:
    info, splits = load_dataset("fake", subset=40, val_split=0.5)
    with pytest.raises(ValueError, match=r"the training split has 20 images, fewer than one batch of 32 "
                                         r"\(train.batch_size\).*at most 20.*data.subset.*data.val_split"):
        num_batches(splits["train"], 32, drop_last=True)
    with pytest.raises(ValueError, match="fewer than one batch"):
        _batches(splits["train"], info, batch_size=32, drop_last=True)
    assert num_batches(splits["train"], 20, drop_last=True) == 1  # exactly one batch trains
    assert num_batches(splits["train"], 32) == 1  # evaluation keeps the partial batch


@pytest.mark.parametrize("kwargs", [{"subset": 0}, {"val_split": 1.0}, {"val_split": -0.1}])
def test_bad_split_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        load_dataset("fake", **kwargs)


def test_split_rejects_float_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))


# ---------------------------------------------------------------------------- batching


def test_batches_are_a_pure_function_of_seed_and_epoch(fmnist_small) -> None:
    info, splits = fmnist_small
    first = _batches(splits["train"], info, epoch=1)
    torch.manual_seed(1234)  # the global RNG must not matter
    _batches(splits["train"], info, epoch=0)  # nor what ran before
    again = _batches(splits["train"], info, epoch=1)
    assert len(first) == len(again) == 13
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other_epoch = _batches(splits["train"], info, epoch=2)
    other_seed = _batches(splits["train"], info, epoch=1, seed=1)
    assert not torch.equal(first[0][1], other_epoch[0][1])
    assert not torch.equal(first[0][1], other_seed[0][1])


def test_eval_batches_are_in_order_and_normalised(fmnist_small) -> None:
    info, splits = fmnist_small
    batches = _batches(splits["val"], info, batch_size=64, train=False, augment=True)
    assert [len(y) for _, y in batches] == [64, 64, 64, 8] and num_batches(splits["val"], 64) == 4
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), splits["val"].labels)
    expected = (splits["val"].images.float() / 255 - info.mean[0]) / info.std[0]
    assert torch.allclose(x, expected, atol=1e-5)


def test_normalisation_is_roughly_standard(fmnist_small) -> None:
    info, splits = fmnist_small
    x = torch.cat([b[0] for b in _batches(splits["train"], info, batch_size=256)])
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.1


def test_drop_last(fmnist_small) -> None:
    info, splits = fmnist_small
    batches = _batches(splits["train"], info, batch_size=300, drop_last=True)
    assert [len(y) for _, y in batches] == [300, 300]
    assert num_batches(splits["train"], 300, drop_last=True) == 2
    assert num_batches(splits["train"], 300) == 3


def test_augmentation_is_a_small_shift_or_flip(fmnist_small) -> None:
    """Same seed, same order; each augmented image is its original shifted ≤2px, maybe flipped."""
    info, splits = fmnist_small
    x_aug, y_aug = _batches(splits["train"], info, batch_size=32)[0]
    x, y = _batches(splits["train"], info, batch_size=32, augment=False)[0]
    assert x_aug.shape == x.shape == (32, 1, 28, 28) and torch.equal(y_aug, y)
    assert not torch.equal(x_aug, x)
    raw = (x * info.std[0] + info.mean[0]).mul(255).round()
    raw_aug = (x_aug * info.std[0] + info.mean[0]).mul(255).round()
    padded = torch.nn.functional.pad(raw, (2, 2, 2, 2))
    for img, orig in zip(raw_aug, padded):
        candidates = [orig[:, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(img, c) or torch.equal(img, c.flip(-1)) for c in candidates)


def test_random_erasing_replaces_one_rectangle_per_erased_image(fmnist_small) -> None:
    """With erase_prob=p, about p of the images differ from their crop-and-flip in exactly one rectangle of 2-40% of
    the image, and nowhere else; the draws are a pure function of (seed, epoch)."""
    info, splits = fmnist_small
    kept = _batches(splits["train"], info, batch_size=400)[0][0]  # the first batch: crops and flips drawn first
    erased = _batches(splits["train"], info, batch_size=400, erase_prob=0.5)[0][0]
    assert torch.equal(erased, _batches(splits["train"], info, batch_size=400, erase_prob=0.5)[0][0])
    changed = 0
    for a, b in zip(kept, erased):
        diff = (a != b)[0]
        if not diff.any():
            continue
        changed += 1
        rows, cols = diff.any(1).nonzero().flatten(), diff.any(0).nonzero().flatten()
        top, left, bottom, right = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
        assert not diff[:top].any() and not diff[bottom:].any() and not diff[:, :left].any()
        assert not diff[:, right:].any()  # outside the rectangle the image is the crop-and-flip
        assert (bottom - top) * (right - left) <= 0.45 * 28 * 28
    assert 0.4 * len(kept) < changed < 0.6 * len(kept)
    every = _batches(splits["train"], info, batch_size=400, erase_prob=1.0)[0][0]
    assert all(not torch.equal(a, b) for a, b in zip(kept, every))
    with pytest.raises(ValueError, match=r"erase_prob must be in \[0, 1\], got 1.5"):
        _batches(splits["train"], info, erase_prob=1.5)


def test_random_erasing_off_draws_nothing(fmnist_small) -> None:
    """erase_prob=0 (the default) gives the batches of a run from before random erasing existed: same draws."""
    info, splits = fmnist_small
    default = _batches(splits["train"], info, batch_size=100)
    off = _batches(splits["train"], info, batch_size=100, erase_prob=0.0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(default, off))


def test_fake_has_no_augmentation() -> None:
    info, splits = load_dataset("fake")
    aug = _batches(splits["train"], info)
    plain = _batches(splits["train"], info, augment=False)
    assert all(torch.equal(a[0], p[0]) for a, p in zip(aug, plain))


# ------------------------------------------------------------------------------ names


@pytest.mark.parametrize("name", ["mnist", "cifar10:x", "imagefolder", "imagefolder:"])
def test_unknown_name_lists_known_names(name: str) -> None:
    with pytest.raises(ValueError) as err:
        load_dataset(name)
    for known in ("fashion-mnist", "cifar10", "cifar100", "svhn", "digits", "fake",
                  "imagefolder:PATH"):
        assert known in str(err.value)


# ----------------------------------------------------------------- torchvision datasets


class _FakeCIFAR:
    """Stands in for torchvision's CIFAR10/100: NHWC uint8 `.data`, list `.targets`."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        n = 12 if train else 4
        self.root = root
        self.data = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(n)]
        self.classes = [f"c{i}" for i in range(10)]


class _FakeSVHN:
    """Stands in for torchvision's SVHN: NCHW uint8 `.data`, numpy `.labels`."""

    def __init__(self, root: str, split: str, download: bool) -> None:
        n = 12 if split == "train" else 4
        self.data = np.random.default_rng(n).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        self.labels = np.arange(n) % 10


@pytest.mark.parametrize("name, cls_name", [("cifar10", "CIFAR10"), ("cifar100", "CIFAR100")])
def test_cifar_via_torchvision(monkeypatch, tmp_path: Path, name: str, cls_name: str) -> None:
    monkeypatch.setattr(torchvision.datasets, cls_name, _FakeCIFAR)
    info, splits = load_dataset(name, root=str(tmp_path))
    train = splits["train"]
    assert train.images.shape == (12, 3, 32, 32) and train.images.dtype == torch.uint8
    nhwc = _FakeCIFAR(str(tmp_path), True, False).data
    assert torch.equal(train.images.permute(0, 2, 3, 1), torch.from_numpy(nhwc))
    assert train.labels.tolist() == [i % 10 for i in range(12)] and len(splits["test"]) == 4
    assert info.mean == data.PUBLISHED_STATS[name][0] and info.class_names[0] == "c0"
    assert data.augmentation_for(info) == data.Augmentation(crop_pad=4, hflip=True)


def test_svhn_via_torchvision(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torchvision.datasets, "SVHN", _FakeSVHN)
    info, splits = load_dataset("svhn", root=str(tmp_path))
    assert torch.equal(splits["train"].images, torch.from_numpy(_FakeSVHN("", "train", False).data))
    assert splits["test"].labels.dtype == torch.int64 and len(splits["test"]) == 4
    assert info.class_names == tuple("0123456789") and info.input_size == (3, 32, 32)
    assert not data.augmentation_for(info).hflip


def test_missing_torchvision_dataset_names_dataset_and_path(monkeypatch, tmp_path: Path) -> None:
    def offline(*args, **kwargs):
        raise RuntimeError("Dataset not found or corrupted")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(FileNotFoundError, match="cifar10") as err:
        load_dataset("cifar10", root=str(tmp_path))
    assert str(tmp_path) in str(err.value)


# ------------------------------------------------------------------ imagefolder, digits, fake


def _write_images(folder: Path, count: int, size: tuple[int, int], mode: str) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new(mode, size, color=40 * i).save(folder / f"{i}.png")


def test_imagefolder(tmp_path: Path) -> None:
    _write_images(tmp_path / "train" / "cat", 3, (40, 30), "RGB")
    _write_images(tmp_path / "train" / "dog", 2, (20, 20), "L")
    _write_images(tmp_path / "val" / "cat", 1, (32, 32), "RGB")
    _write_images(tmp_path / "val" / "dog", 1, (50, 10), "L")
    info, splits = load_dataset(f"imagefolder:{tmp_path}")
    assert splits["train"].images.shape == (5, 3, 32, 32)
    assert splits["train"].images.dtype == torch.uint8
    assert splits["train"].labels.tolist() == [0, 0, 0, 1, 1]
    assert splits["test"].labels.tolist() == [0, 1]
    assert info.class_names == ("cat", "dog") and info.input_size == (3, 32, 32)


def _write_noise_images(folder: Path, per_class: int, seed: int) -> None:
    """``per_class`` noise images of assorted sizes in classes a, b, c, some RGB and some greyscale PNGs."""
    gen = torch.Generator().manual_seed(seed)
    for label in "abc":
        (folder / label).mkdir(parents=True)
        for i in range(per_class):
            h, w = torch.randint(20, 48, (2,), generator=gen).tolist()
            pixels = torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).convert("RGB" if i % 3 else "L").save(folder / label / f"{i}.png")


def _all_batches(splits: dict, info: DatasetInfo, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every batch the engine reads: two augmented training epochs, then each split in order."""
    batches = [b for epoch in (0, 1) for b in iterate_batches(splits["train"], info, batch_size=8, train=True,
                                                              augment=True, seed=3, epoch=epoch, drop_last=True,
                                                              workers=workers)]
    for name in sorted(splits):
        batches += iterate_batches(splits[name], info, batch_size=7, train=False, augment=False, seed=0, epoch=0,
                                   workers=workers)
    return batches


def test_streamed_imagefolder_yields_the_batches_of_the_in_memory_one(tmp_path: Path) -> None:
    """Images decoded per batch (``stream``), batches assembled by DataLoader workers or not: the same info, the same
    seeded subset and validation cut, and bit-identical batches (order, crops, flips, normalisation)."""
    _write_noise_images(tmp_path / "train", 14, seed=0)
    _write_noise_images(tmp_path / "val", 3, seed=1)
    name, cuts = f"imagefolder:{tmp_path}", {"subset": 36, "val_split": 0.25, "seed": 2}
    info, splits = load_dataset(name, **cuts)
    expected = _all_batches(splits, info, workers=0)
    assert data.augmentation_for(info).crop_pad and data.augmentation_for(info).hflip
    for stream, workers in ((True, 0), (True, 2), (False, 2)):
        global_rng = torch.get_rng_state()
        streamed_info, streamed = load_dataset(name, stream=stream, workers=workers, **cuts)
        assert streamed_info == info and streamed.keys() == splits.keys()
        assert all(isinstance(s, data.FileSplit) == stream for s in streamed.values())
        batches = _all_batches(streamed, streamed_info, workers)
        assert torch.equal(torch.get_rng_state(), global_rng)  # e.g. the model's initialisation is left alone
        assert len(batches) == len(expected)
        assert all(torch.equal(x, ex) and torch.equal(y, ey) for (x, y), (ex, ey) in zip(batches, expected))


def test_training_on_a_streamed_imagefolder_with_workers_ends_with_the_in_memory_weights(tmp_path: Path) -> None:
    """The engine passes data.stream and data.workers to every read: training, precise BatchNorm, evaluation."""
    from safetensors.torch import load_file

    from selfens_core import engine
    from selfens_core.config import load_config

    _write_noise_images(tmp_path / "images" / "train", 16, seed=0)
    _write_noise_images(tmp_path / "images" / "val", 2, seed=1)
    common = ["model.name=hne-resnet-small", "model.args.num_members=2", f"data.name=imagefolder:{tmp_path / 'images'}",
              "data.val_split=0.25", "train.batch_size=12", "train.epochs=1", "train.precise_bn=1"]
    for run, options in (("memory", []), ("streamed", ["data.stream=true", "data.workers=2"])):
        engine.train(load_config(None, [*common, *options]), tmp_path / run, progress=False)
    a, b = (load_file(tmp_path / run / "model.safetensors") for run in ("memory", "streamed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [(tmp_path / run / "metrics.json").read_text() for run in ("memory", "streamed")]
    assert metrics[0] == metrics[1]


def test_a_streamed_image_that_does_not_decode_is_named_when_read(tmp_path: Path) -> None:
    _write_noise_images(tmp_path / "train", 2, seed=0)
    _write_noise_images(tmp_path / "val", 1, seed=1)
    bad = tmp_path / "val" / "b" / "broken.png"
    bad.write_bytes(b"not an image at all")
    info, splits = load_dataset(f"imagefolder:{tmp_path}", stream=True)  # only training images are decoded now
    with pytest.raises(ValueError, match=r"imagefolder: cannot read the image .*broken\.png.*replace or remove"):
        list(iterate_batches(splits["test"], info, batch_size=2, train=False, augment=False, seed=0, epoch=0,
                             workers=2))


def test_only_an_imagefolder_streams() -> None:
    with pytest.raises(ValueError, match=r"data.stream.*'digits' is held in memory"):
        load_dataset("digits", stream=True)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    _write_images(tmp_path / "train" / "cat", 1, (8, 8), "RGB")
    _write_images(tmp_path / "test" / "dog", 1, (8, 8), "RGB")
    with pytest.raises(ValueError, match="classes"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_imagefolder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    _write_images(tmp_path / "train" / "cat", 2, (8, 8), "RGB")
    _write_images(tmp_path / "val" / "cat", 1, (8, 8), "RGB")
    bad = tmp_path / "train" / "cat" / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"imagefolder: cannot read the image .*broken\.png") as err:
        load_dataset(f"imagefolder:{tmp_path}")
    assert str(bad) in str(err.value) and "replace or remove the file" in str(err.value)
    good = (tmp_path / "train" / "cat" / "0.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # a truncated PNG: PIL fails only when decoding
    with pytest.raises(ValueError, match="cannot read the image") as err:
        load_dataset(f"imagefolder:{tmp_path}")
    assert str(bad) in str(err.value)


def test_imagefolder_empty_class_folders_are_named(tmp_path: Path) -> None:
    _write_images(tmp_path / "train" / "cat", 1, (8, 8), "RGB")
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "owl").mkdir()
    (tmp_path / "train" / "owl" / "notes.txt").write_text("not an image")
    _write_images(tmp_path / "val" / "cat", 1, (8, 8), "RGB")
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(f"imagefolder:{tmp_path}")
    message = str(err.value)
    assert f"class folder(s) {tmp_path / 'train' / 'dog'}, {tmp_path / 'train' / 'owl'} hold no images" in message
    assert "expected" in message and ".png" in message


def test_imagefolder_without_class_folders_says_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "loose.png")  # an image, but not in a class folder
    _write_images(tmp_path / "val" / "cat", 1, (8, 8), "RGB")
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(f"imagefolder:{tmp_path}")
    train = tmp_path / "train"
    assert f"{train} has no class sub-folders; expected {train}/<class>/ sub-folders" in str(err.value)


def test_digits() -> None:
    info, splits = load_dataset("digits", seed=5)
    assert (len(splits["train"]), len(splits["test"])) == (1437, 360)
    assert splits["train"].images.shape[1:] == (1, 8, 8) and splits["train"].images.max() == 255
    assert info.num_classes == 10 and info.input_size == (1, 8, 8)
    _, again = load_dataset("digits", seed=6)
    assert torch.equal(splits["test"].images, again["test"].images)  # the split is fixed


@pytest.mark.parametrize("name, shape, classes", [
    ("fake", (1, 28, 28), 10),
    ("fake:3:32:32:10", (3, 32, 32), 10),
    ("fake:1:8:8:4", (1, 8, 8), 4),
])
def test_fake_variants(name: str, shape: tuple[int, int, int], classes: int) -> None:
    info, splits = load_dataset(name)
    assert splits["train"].images.shape == (512, *shape) and len(splits["test"]) == 128
    assert splits["train"].images.dtype == torch.uint8
    assert (info.name, info.input_size, info.num_classes) == (name, shape, classes)


@pytest.mark.parametrize("name", ["fake:3:32", "fake:a:b:c:d", "fake:1:2:2:10", "fake:1:8:8:1"])
def test_bad_fake_names(name: str) -> None:
    with pytest.raises(ValueError):
        load_dataset(name)


def test_fake_is_learnable() -> None:
    """A nearest-class-mean classifier on raw pixels is far above chance."""
    _, splits = load_dataset("fake")
    train, test = splits["train"], splits["test"]
    centroids = torch.stack([train.images[train.labels == k].float().mean(0) for k in range(10)])
    dists = torch.cdist(test.images.float().flatten(1), centroids.flatten(1))
    assert (dists.argmin(1) == test.labels).float().mean() > 0.9
