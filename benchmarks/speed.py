"""Training and inference speed of every built-in recipe next to the dense network of its family, as ratios.

Each family runs in a fresh process (as a user's run would: the allocator setting, oneDNN caches and threads start
clean); inside it the self-ensemble and its dense network are timed in interleaved rounds, so their ratios hold on a
noisy machine even when absolute numbers do not. A training step is forward + member cross-entropy + backward + SGD
step (a trainable combiner's loss included); achieved GFLOP/s = 3 × forward FLOPs × images/s for training and
1 × for inference. Goals (issue 13): training at ≥ 0.6× the dense network's per-FLOP rate; inference with all members
at ≥ 0.8× the per-FLOP rate of one member, and ≥ 0.9× of the FLOP speed-up over members run one at a time. Every member
alone costs what ``members=1`` costs, so those two inference ratios are one number (F_all·r_all / F_one·r_one): the
table prints it once, against the stricter 0.9.

    python benchmarks/speed.py                        # every family, channels_last, 3 rounds
    python benchmarks/speed.py --family hne-resnet-small --layouts nchw,channels_last --profile
    python benchmarks/speed.py --compile              # also torch.compile (reports compile time)
    SELFENS_MALLOC=system python benchmarks/speed.py  # glibc's default allocator, for comparison
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from torch.nn import functional as F

# family: (self-ensemble name, its build args, the dense network's name, its build args). A dense network is the
# family's member architecture as a one-member model, so "per-FLOP rate" compares the same layers.
_NARROW_RESNET10T = {"small_images": True, "channels": [32, 64, 128, 256], "stem_width": 16}
_NFE_RESNET10T = {"small_images": True, "channels": [24, 48, 92, 184], "stem_width": 12}  # configs/nfe-resnet10t-fmnist
FAMILIES: dict[str, tuple[str, dict, str, dict]] = {
    "hne-resnet-small": ("hne-resnet-small", {}, "hne-resnet-small", {"num_members": 1}),
    "hne-mobilenetv2": ("hne-mobilenetv2", {}, "hne-mobilenetv2", {"num_members": 1}),
    "hne-resnet10t": ("hne-resnet10t", {"num_members": 4, **_NARROW_RESNET10T},
                      "deep-ensemble-resnet10t", {"num_members": 1, **_NARROW_RESNET10T}),
    "ienet-mobilenetv2": ("ienet-mobilenetv2", {}, "ienet-mobilenetv2", {"widths": [1.0]}),
    "deep-ensemble-resnet10t": ("deep-ensemble-resnet10t", {"num_members": 4, **_NARROW_RESNET10T},
                                "deep-ensemble-resnet10t", {"num_members": 1, **_NARROW_RESNET10T}),
    # NFE's exits run dense kernels over masked weights: its FLOPs here are the dense ones
    # (plugins/nfe/README.md, "Cost")
    "nfe-resnet10t": ("nfe-resnet10t", {"num_members": 3, **_NFE_RESNET10T},
                      "deep-ensemble-resnet10t", {"num_members": 1, **_NFE_RESNET10T}),
    # six members of 200-466-466 against one of them (configs/supernet-mlp-fmnist.yaml)
    "supernet-mlp": ("supernet-mlp", {"num_members": 6, "hidden": [200, 466, 466]},
                     "supernet-mlp", {"num_members": 1, "hidden": [200, 466, 466]}),
}


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    out = model(x)
    loss = F.cross_entropy(out.flatten(0, 1), y.repeat(out.shape[0])) * out.shape[0]
    if any(p.requires_grad for p in model.combiner.parameters()):
        loss = loss + model.combiner.loss(out.detach(), y)
    loss.backward()
    optimizer.step()


def _rate(fn, batch: int, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return batch * steps / (time.perf_counter() - start)


def measure_family(family: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs inside the family's own process: every variant, interleaved rounds, median images/s."""
    import selfens_core
    from selfens_core.allocator import keep_freed_memory
    from selfens_core.metrics import count_flops

    name, build, dense_name, dense_build = FAMILIES[family]
    shape = (args.in_chans, args.size, args.size)
    x = torch.randn(args.batch, *shape)
    y = torch.randint(0, 10, (args.batch,))
    variants: dict[str, Any] = {}
    compile_seconds: dict[str, float] = {}
    for layout in args.layouts.split(","):
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        xl = x.contiguous(memory_format=memory_format)
        for compiled in ([False, True] if args.compile else [False]):
            for role, (model_name, model_args) in (("ensemble", (name, build)), ("dense", (dense_name, dense_build))):
                torch.manual_seed(0)
                model = selfens_core.create(model_name, num_classes=10, in_chans=args.in_chans, **model_args)
                model = model.to(memory_format=memory_format)
                flops = count_flops(model.eval(), torch.zeros(1, *shape))
                flops_one = count_flops(model, torch.zeros(1, *shape), members=1)
                optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                run = torch.compile(model, dynamic=False) if compiled else model
                key = f"{role}/{layout}/{'compiled' if compiled else 'eager'}"
                started = time.perf_counter()
                model.train()
                _train_step(run, optimizer, xl, y)  # warm-up (and compilation)
                model.eval()
                with torch.no_grad():
                    run(xl)
                    run(xl, members=1)
                compile_seconds[key] = time.perf_counter() - started
                variants[key] = {"model": model, "run": run, "optimizer": optimizer, "x": xl, "flops": flops,
                                 "flops_one": flops_one, "num_members": model.num_members}
    rates: dict[str, dict[str, list[float]]] = {k: {"train": [], "all": [], "one": []} for k in variants}
    for _ in range(args.rounds):
        for key, v in variants.items():
            v["model"].train()
            rates[key]["train"].append(_rate(lambda v=v: _train_step(v["run"], v["optimizer"], v["x"], y),
                                             args.batch, args.steps))
            v["model"].eval()
            with torch.no_grad():
                rates[key]["all"].append(_rate(lambda v=v: v["run"](v["x"]), args.batch, args.steps))
                rates[key]["one"].append(_rate(lambda v=v: v["run"](v["x"], members=1), args.batch, args.steps))
    result = {}
    for key, v in variants.items():
        median = {k: statistics.median(r) for k, r in rates[key].items()}
        result[key] = {
            "members": v["num_members"], "mflops": v["flops"] / 1e6, "mflops_one": v["flops_one"] / 1e6,
            "train_img_s": median["train"], "train_gflop_s": 3 * v["flops"] * median["train"] / 1e9,
            "all_img_s": median["all"], "all_gflop_s": v["flops"] * median["all"] / 1e9,
            "one_img_s": median["one"], "one_gflop_s": v["flops_one"] * median["one"] / 1e9,
            "warmup_s": compile_seconds[key],
        }
    if args.profile:
        result["profile"] = _profile(variants, y, args)
    result["allocator"] = keep_freed_memory()
    return result


def _profile(variants: dict[str, Any], y: torch.Tensor, args: argparse.Namespace) -> dict[str, str]:
    """torch.profiler's top operators (self CPU time) over a few training steps of each variant."""
    from torch.profiler import ProfilerActivity, profile

    tables = {}
    for key, v in variants.items():
        v["model"].train()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                _train_step(v["run"], v["optimizer"], v["x"], y)
        tables[key] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows)
    return tables


def _ratios(r: dict[str, Any], layout: str, mode: str) -> dict[str, float]:
    ens, dense = r[f"ensemble/{layout}/{mode}"], r[f"dense/{layout}/{mode}"]
    return {
        "train_per_flop_vs_dense": ens["train_gflop_s"] / dense["train_gflop_s"],
        "all_per_flop_vs_one": ens["all_gflop_s"] / ens["one_gflop_s"] if ens["members"] > 1 else float("nan"),
        "one_member_vs_dense_img_s": ens["one_img_s"] / dense["all_img_s"],
    }


def print_tables(results: dict[str, dict[str, Any]]) -> None:
    print("| family | variant | members | MFLOP/img | train img/s | train GFLOP/s | all img/s | all GFLOP/s | "
          "1 member img/s | 1 member GFLOP/s | warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for family, r in results.items():
        for key, m in r.items():
            if key in ("profile", "allocator"):
                continue
            print(f"| {family} | {key} | {m['members']} | {m['mflops']:.0f} | {m['train_img_s']:.0f} | "
                  f"{m['train_gflop_s']:.1f} | {m['all_img_s']:.0f} | {m['all_gflop_s']:.1f} | {m['one_img_s']:.0f} | "
                  f"{m['one_gflop_s']:.1f} | {m['warmup_s']:.1f} |")
    print("\n| family | layout/mode | train per-FLOP vs dense (≥0.6) | all members per-FLOP vs one = speed-up vs "
          "FLOP promise (≥0.9) | members=1 vs dense img/s (≥1) |")
    print("|---|---|---|---|---|")
    for family, r in results.items():
        for key in (k for k in r if k.startswith("ensemble/")):
            layout, mode = key.split("/")[1:]
            q = _ratios(r, layout, mode)
            print(f"| {family} | {layout}/{mode} | {q['train_per_flop_vs_dense']:.2f} | "
                  f"{q['all_per_flop_vs_one']:.2f} | {q['one_member_vs_dense_img_s']:.2f} |")
    for family, r in results.items():
        for key, table in r.get("profile", {}).items():
            print(f"\n### {family} {key}: top operators, training\n{table}")
    allocator = next(iter(results.values()))["allocator"]
    print(f"\nallocator: {allocator} (SELFENS_MALLOC={os.environ.get('SELFENS_MALLOC', 'keep')})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default=",".join(FAMILIES), help=f"comma-separated, from {', '.join(FAMILIES)}")
    parser.add_argument("--layouts", default="channels_last", help="comma-separated: nchw, channels_last")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd models")
    parser.add_argument("--profile", action="store_true", help="print the top operators of each training step")
    parser.add_argument("--profile-rows", type=int, default=12)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # the family a child process measures
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure_family(args.worker, args)))
        return
    unknown = [f for f in args.family.split(",") if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown family {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    results = {}
    for family in args.family.split(","):
        print(f"measuring {family} ...", file=sys.stderr, flush=True)
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", family],
                               capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"{family} failed:\n{child.stderr[-3000:]}")
        results[family] = json.loads(child.stdout.strip().splitlines()[-1])
    print_tables(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
