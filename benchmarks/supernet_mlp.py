"""How to run K narrow MLPs side by side on a CPU: the measurement behind ``supernet-mlp``'s implementation.

Four ways to compute the logits of K independent MLPs (default: the thesis's 6 × 784-200-466-466-10) on one batch:

- ``per member``: each member's layers as its own matrix products, one member after another (what ``supernet-mlp``
  does; its parameters stay apart per member, so each member can have its own optimizer);
- ``stacked bmm``: the same per-member parameters stacked into (K, out, in) at every call and run as one batched
  matrix product per layer (the first layer, whose input all members share, as one product over the concatenated
  weights);
- ``one (K, out, in) parameter``: the batched product over weights stored stacked (no copy per call, but no
  parameter per member either, so no per-member optimizer);
- ``grouped conv1d``: a 1×1 grouped convolution with K groups per layer.

Times are medians over interleaved rounds (machine load drifts hit every variant alike), forward alone (inference)
and forward + backward (training). Measured on the 2-core development CPU with one thread while another training
ran (ms per call, forward / forward + backward):

    batch 128:   per member 6.6 / 18.8, stacked bmm 7.7 / 22.5, one parameter 6.5 / 20.5, grouped conv1d 38 / 108
    batch 1024:  per member 63 / 195,   stacked bmm 73 / 220,   one parameter 73 / 224,  grouped conv1d 445 / 1135

Two threads on that loaded machine gave no stable numbers (oversubscribed cores); no GPU was measured, where one
batched product per layer should beat K small ones by saving kernel launches.

    python benchmarks/supernet_mlp.py                        # 1 thread, batch 128, 15 rounds
    python benchmarks/supernet_mlp.py --threads 2 --batch 1024 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F


def variants(weights: list[list[torch.Tensor]], biases: list[list[torch.Tensor]]) -> dict[str, Callable]:
    """The four implementations over per-member ``weights[layer][member]`` / ``biases[layer][member]``."""
    layers, members = len(weights), len(weights[0])
    stacked_w = [torch.stack([w.detach() for w in ws]).requires_grad_() for ws in weights]
    stacked_b = [torch.stack([b.detach() for b in bs]).requires_grad_() for bs in biases]

    def per_member(x):
        outputs = []
        for i in range(members):
            h = x
            for layer in range(layers):
                h = F.linear(h, weights[layer][i], biases[layer][i])
                h = F.relu(h) if layer < layers - 1 else h
            outputs.append(h)
        return torch.stack(outputs)

    def batched(x, w, b):  # w[layer]: (K, out, in), b[layer]: (K, out)
        h = F.relu(F.linear(x, w[0].flatten(0, 1), b[0].flatten()).view(len(x), members, -1).transpose(0, 1))
        for layer in range(1, layers):
            h = torch.baddbmm(b[layer].unsqueeze(1), h, w[layer].transpose(1, 2))
            h = F.relu(h) if layer < layers - 1 else h
        return h

    def stacked_bmm(x):
        return batched(x, [torch.stack(ws) for ws in weights], [torch.stack(bs) for bs in biases])

    def one_parameter(x):
        return batched(x, stacked_w, stacked_b)

    def grouped_conv1d(x):
        h = F.relu(F.linear(x, torch.cat(weights[0]), torch.cat(biases[0]))).unsqueeze(-1)
        for layer in range(1, layers):
            h = F.conv1d(h, torch.cat(weights[layer]).unsqueeze(-1), torch.cat(biases[layer]), groups=members)
            h = F.relu(h) if layer < layers - 1 else h
        return h.view(len(x), members, -1).transpose(0, 1)

    return {"per member": per_member, "stacked bmm": stacked_bmm, "one (K, out, in) parameter": one_parameter,
            "grouped conv1d": grouped_conv1d}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--widths", type=int, nargs="+", default=[784, 200, 466, 466, 10],
                        help="input, hidden layers, classes")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5, help="calls per variant per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pairs = list(zip(args.widths, args.widths[1:]))
    weights = [[(torch.randn(o, i) / i ** 0.5).requires_grad_() for _ in range(args.members)] for i, o in pairs]
    biases = [[torch.zeros(o, requires_grad=True) for _ in range(args.members)] for _, o in pairs]
    x = torch.randn(args.batch, args.widths[0])
    runs = variants(weights, biases)
    reference = runs["per member"](x)
    for name, run in runs.items():
        torch.testing.assert_close(run(x), reference, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    times: dict[tuple[str, str], list[float]] = {(n, mode): [] for n in runs for mode in ("forward", "training")}
    for _ in range(args.rounds):
        for name, run in runs.items():
            for mode in ("forward", "training"):
                start = time.perf_counter()
                for _ in range(args.calls):
                    if mode == "forward":
                        with torch.no_grad():
                            run(x)
                    else:
                        run(x).sum().backward()
                times[(name, mode)].append((time.perf_counter() - start) / args.calls * 1e3)
    print(f"{args.members} members {'-'.join(map(str, args.widths))}, batch {args.batch}, {args.threads} thread(s), "
          f"median of {args.rounds} rounds (ms per call)")
    print(f"{'':28s} {'forward':>9s} {'fwd+bwd':>9s}")
    for name in runs:
        print(f"{name:28s} {statistics.median(times[(name, 'forward')]):9.2f} "
              f"{statistics.median(times[(name, 'training')]):9.2f}")


if __name__ == "__main__":
    main()
