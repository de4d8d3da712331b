"""HNE with all members vs a deep ensemble of the same member architecture and count: FLOPs and CPU throughput.

Both models run side by side in one process, interleaved, so the ratios are comparable on a noisy machine even when
the absolute numbers are not. Prints one table; ``--json`` also writes the numbers.

    python benchmarks/hne_vs_deep_ensemble.py                 # hne-resnet-small, 16 members, 1×28×28, batch 128
    python benchmarks/hne_vs_deep_ensemble.py --model hne-mobilenetv2 --in-chans 3 --size 32
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

import selfens_core
from selfens_core.metrics import count_flops


def paper_ratio(num_members: int) -> float:
    """Cost of all HNE members over N independent networks when every block costs the same (paper, Sec. 3.1)."""
    b = int(math.log2(num_members))
    return 2 / (b + 1) - 1 / ((b + 1) * 2**b)


@torch.no_grad()
def images_per_second(model, x, repeats: int) -> list[float]:
    model(x)  # warm-up: allocator, oneDNN primitives
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        rates.append(x.shape[0] / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hne-resnet-small")
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    torch.manual_seed(0)
    hne = selfens_core.create(args.model, num_classes=10, in_chans=args.in_chans).eval()
    n = hne.num_members
    de = selfens_core.create(f"deep-ensemble-{args.model}", num_classes=10, in_chans=args.in_chans,
                             num_members=n).eval()
    one = torch.zeros(1, args.in_chans, args.size, args.size)
    flops = {"hne": count_flops(hne, one), "de": count_flops(de, one)}
    x = torch.randn(args.batch, args.in_chans, args.size, args.size)

    rates: dict[str, list[float]] = {}
    for layout in ("nchw", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        xx = x.contiguous(memory_format=fmt)
        models = {"hne": hne.to(memory_format=fmt), "de": de.to(memory_format=fmt)}
        for _ in range(args.rounds):  # interleave so drifts in machine load hit both models alike
            for name, model in models.items():
                rates.setdefault(f"{name}/{layout}", []).extend(images_per_second(model, xx, 1))
    med = {k: statistics.median(v) for k, v in rates.items()}

    print(f"{args.model}: {n} members, input {args.in_chans}x{args.size}x{args.size}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print(f"{'':28}{'HNE':>12}{'deep ens.':>12}{'HNE/DE':>10}")
    print(f"{'MFLOPs per image':28}{flops['hne'] / 1e6:12.1f}{flops['de'] / 1e6:12.1f}"
          f"{flops['hne'] / flops['de']:10.3f}")
    print(f"{'paper ratio (equal blocks)':28}{'':24}{paper_ratio(n):10.3f}")
    for layout in ("nchw", "channels_last"):
        h, d = med[f"hne/{layout}"], med[f"de/{layout}"]
        print(f"{'images/s ' + layout:28}{h:12.1f}{d:12.1f}{h / d:10.3f}")
    for name in ("hne", "de"):
        gain = med[f"{name}/channels_last"] / med[f"{name}/nchw"]
        print(f"{'channels_last speed-up ' + name.upper():28}{gain:12.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "members": n, "flops": flops, "images_per_s": med,
                       "paper_ratio": paper_ratio(n)}, f, indent=2)


if __name__ == "__main__":
    main()
