"""Would a sparse execution path make pruned NFE convolutions faster on this CPU? Dense conv against torch's sparse
kernels, per layer shape and sparsity.

A masked conv computes with a dense weight whose pruned entries are zero, so it costs what the dense conv costs. The
alternatives timed here, on the same unstructured random masks NFE's pruning produces:

- ``dense``: ``F.conv2d`` with the masked dense weight (what NFE runs);
- ``im2col``: ``F.unfold`` then a dense matmul: the lowering a sparse conv needs, to separate its own cost;
- ``csr``: ``F.unfold`` then ``torch.sparse.mm`` with the weight as a CSR matrix (MKL sparse × dense on CPU);
- ``2:4``: semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``), which needs a CUDA GPU with sparse
  tensor cores; on a CPU the row says why it cannot run.

Layers: the three stage convs of WRN-28-10 on 32×32 images (the paper's model) and the four of the Fashion-MNIST
NFE template (resnet10t at 24-48-92-184 with ``small_images``, configs/nfe-resnet10t-fmnist.yaml). Forward only;
timings interleave the kernels in rounds and report the median, so load drift hits all alike.

    python benchmarks/nfe_sparse.py                          # batch 32, 2 threads, 5 rounds
    python benchmarks/nfe_sparse.py --batch 128 --json nfe_sparse.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch.nn import functional as F

# (name, channels in = out, kernel, image size)
LAYERS = [("wrn28-10 stage1", 160, 3, 32), ("wrn28-10 stage2", 320, 3, 16), ("wrn28-10 stage3", 640, 3, 8),
          ("fmnist resnet10t l1", 24, 3, 28), ("fmnist resnet10t l2", 48, 3, 14), ("fmnist resnet10t l3", 92, 3, 7),
          ("fmnist resnet10t l4", 184, 3, 4)]


def kernels(weight: torch.Tensor, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor] | str]:
    """The ways to compute the conv of ``x`` with ``weight`` (padding 1, stride 1), or why one cannot run."""
    out_c, k = weight.shape[0], weight.shape[-1]
    flat = weight.reshape(out_c, -1)
    csr = flat.to_sparse_csr()
    size = x.shape[-2:]

    def lowered(matmul: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        cols = F.unfold(x, k, padding=k // 2)  # (B, C·k·k, H·W)
        out = matmul(cols.transpose(0, 1).reshape(cols.shape[1], -1))  # (C_out, B·H·W)
        return out.reshape(out_c, x.shape[0], *size).transpose(0, 1)

    found: dict[str, Callable[[], torch.Tensor] | str] = {
        "dense": lambda: F.conv2d(x, weight, padding=k // 2),
        "im2col": lambda: lowered(lambda cols: flat @ cols),
        "csr": lambda: lowered(lambda cols: torch.sparse.mm(csr, cols)),
    }
    try:
        from torch.sparse import to_sparse_semi_structured

        to_sparse_semi_structured(flat)
        found["2:4"] = "converted, but the CPU has no semi-structured kernel to time"
    except (RuntimeError, ValueError, NotImplementedError, ImportError) as error:
        found["2:4"] = f"unavailable: {str(error).splitlines()[0][:90]}"
    return found


def time_ms(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="calls per kernel per round")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9, 0.95])
    parser.add_argument("--only", default="", help="time only the layers whose name contains this (e.g. wrn)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    torch.manual_seed(0)
    rows = []
    print(f"batch {args.batch}, {args.threads} threads, median of {args.rounds} rounds; ms per forward "
          f"(speed-up over dense conv)")
    with torch.no_grad():
        for name, channels, k, size in [layer for layer in LAYERS if args.only in layer[0]]:
            x = torch.randn(args.batch, channels, size, size)
            for sparsity in args.sparsities:
                weight = torch.randn(channels, channels, k, k) * (torch.rand(channels, channels, k, k) >= sparsity)
                found = kernels(weight, x)
                runnable = {n: f for n, f in found.items() if callable(f)}
                reference = runnable["dense"]()
                for n, f in runnable.items():  # same result, and warm-up
                    torch.testing.assert_close(f(), reference, rtol=1e-3, atol=1e-3)
                times: dict[str, list[float]] = {n: [] for n in runnable}
                for _ in range(args.rounds):
                    for n, f in runnable.items():
                        times[n].append(time_ms(f, args.repeats))
                medians = {n: statistics.median(t) for n, t in times.items()}
                row = {"layer": name, "channels": channels, "size": size, "sparsity": sparsity, "ms": medians,
                       "speedup": {n: medians["dense"] / m for n, m in medians.items()},
                       "not_run": {n: f for n, f in found.items() if not callable(f)}}
                rows.append(row)
                shown = "  ".join(f"{n} {m:7.2f} ({row['speedup'][n]:.2f}x)" for n, m in medians.items())
                print(f"{name:20s} s={sparsity:.2f}  {shown}")
    for n, why in rows[0]["not_run"].items():
        print(f"{n}: {why}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
