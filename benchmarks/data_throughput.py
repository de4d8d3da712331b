"""Images/s of the training data path: an `imagefolder` of Fashion-MNIST PNGs held in memory vs streamed from disk.

Writes the first N Fashion-MNIST training images (and N // 5 test images) as PNG files into
`runs/fmnist-png-N/{train,val}/<class>/` (kept for later runs), then reads augmented training epochs of
`iterate_batches` (batch 128, as the engine does) in three ways, interleaved over the rounds: the in-memory uint8
path, and the streamed path (`data.stream`: files decoded per batch) with 0 and with W DataLoader workers. Prints
each way's median images/s, its ratio to the in-memory path, and the time `load_dataset` took (the in-memory path
decodes every image once; the streamed one decodes the training images once for their mean and std).

    python benchmarks/data_throughput.py [--images 6000] [--workers 2] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from PIL import Image

from selfens_core.data import iterate_batches, load_dataset

ROOT = Path(__file__).resolve().parents[1]


def write_pngs(folder: Path, images: int) -> None:
    """The first ``images`` training and ``images // 5`` test images of Fashion-MNIST as PNGs under ``folder``."""
    info, splits = load_dataset("fashion-mnist")
    for split, count in (("train", images), ("test", images // 5)):
        source = splits[split]
        for i in range(count):
            target = folder / ("val" if split == "test" else "train") / f"{int(source.labels[i]):02d}" / f"{i}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source.images[i, 0].numpy()).save(target)


def epoch_rate(name: str, stream: bool, workers: int) -> tuple[float, float]:
    """(seconds ``load_dataset`` took, images/s of one augmented training epoch)."""
    started = time.perf_counter()
    info, splits = load_dataset(name, stream=stream, workers=workers)
    loaded = time.perf_counter() - started
    started, seen = time.perf_counter(), 0
    for x, _ in iterate_batches(splits["train"], info, batch_size=128, train=True, augment=True, seed=0, epoch=0,
                                drop_last=True, workers=workers):
        seen += len(x)
    return loaded, seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = ROOT / "runs" / f"fmnist-png-{args.images}"
    if not (folder / "val").is_dir():
        write_pngs(folder, args.images)
    ways = {"in memory": (False, 0), "streamed, 0 workers": (True, 0),
            f"streamed, {args.workers} workers": (True, args.workers)}
    results: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    for _ in range(args.rounds):
        for way, (stream, workers) in ways.items():
            results[way].append(epoch_rate(f"imagefolder:{folder}", stream, workers))
    base = statistics.median(rate for _, rate in results["in memory"])
    print(f"{args.images} Fashion-MNIST PNGs (32x32 RGB after loading), batch 128, augmented; median of "
          f"{args.rounds} rounds")
    for way, measured in results.items():
        rate = statistics.median(r for _, r in measured)
        loaded = statistics.median(s for s, _ in measured)
        print(f"  {way:24s} {rate:9.0f} images/s  ({rate / base:5.3f}x in memory)   load_dataset {loaded:5.1f} s")


if __name__ == "__main__":
    main()
