"""IENet training throughput: 4 sub-networks against the single full network they share, side by side.

Each model runs real training steps (forward, cross-entropy, backward, SGD step; IENet also its stacking combiner's
loss on detached outputs, as the engine does) in interleaved rounds in one process, so drifts in machine load hit all
models alike and the ratios are comparable even when the absolute numbers are not. The single network is the same
MobileNetV2 (timm's with ``small_images``) as a plain timm model; ``IENet [1.0]`` is IENet with one full-width
sub-network, which isolates the cost of sliced layers and switchable BN.

    python benchmarks/ienet_speed.py                     # 1×28×28 (Fashion-MNIST), batch 64, 3 rounds
    python benchmarks/ienet_speed.py --batch 128 --rounds 5 --json ienet_speed.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn import functional as F

import selfens_core
from selfens_core.factory import create_backbone
from selfens_core.metrics import count_flops


class Step:
    """One SGD training step of a model on a fixed batch; ``ensemble`` models return (M, B, C) member logits."""

    def __init__(self, model: torch.nn.Module, ensemble: bool):
        self.model, self.ensemble = model.train(), ensemble
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(x)
        if self.ensemble:
            loss = F.cross_entropy(out.flatten(0, 1), y.repeat(out.shape[0])) * out.shape[0]
            if any(p.requires_grad for p in self.model.combiner.parameters()):
                loss = loss + self.model.combiner.loss(out.detach(), y)
        else:
            loss = F.cross_entropy(out, y)
        loss.backward()
        self.optimizer.step()


def images_per_second(step: Step, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    return steps * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="training steps per model per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    torch.manual_seed(0)
    args_model = dict(num_classes=10, in_chans=args.in_chans)
    models = {
        "single network": (create_backbone("mobilenetv2_100", small_images=True, **args_model), False),
        "IENet [1.0]": (selfens_core.create("ienet-mobilenetv2", widths=[1.0], **args_model), True),
        "IENet 4 sub-nets": (selfens_core.create("ienet-mobilenetv2", **args_model), True),
    }
    one = torch.zeros(1, args.in_chans, args.size, args.size)
    flops = {name: count_flops(model.eval(), one) for name, (model, _) in models.items()}
    steps = {name: Step(model, ensemble) for name, (model, ensemble) in models.items()}
    x = torch.randn(args.batch, args.in_chans, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    for step in steps.values():
        step(x, y)  # warm-up: allocator, oneDNN primitives
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(images_per_second(step, x, y, args.steps))
    med = {name: statistics.median(r) for name, r in rates.items()}

    base = "single network"
    print(f"ienet-mobilenetv2 training: input {args.in_chans}x{args.size}x{args.size}, batch {args.batch}, "
          f"{torch.get_num_threads()} thread(s), median of {args.rounds} interleaved rounds of {args.steps} steps")
    print(f"{'':20}{'MFLOPs/image (fwd)':>20}{'train images/s':>16}{'time vs single':>16}")
    for name in steps:
        print(f"{name:20}{flops[name] / 1e6:20.1f}{med[name]:16.1f}{med[base] / med[name]:15.2f}x")
    print(f"FLOPs ratio IENet 4 sub-nets / single: {flops['IENet 4 sub-nets'] / flops[base]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"flops": flops, "images_per_s": med, "rates": rates, "batch": args.batch}, f, indent=2)


if __name__ == "__main__":
    main()
