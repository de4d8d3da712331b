"""The Fashion-MNIST NFE comparison's configurations in one table: dense and effective (nonzero-weight) FLOPs and
parameters, and measured training and inference images/s on this CPU.

Each configuration is a config file plus overrides (as on the ``selfens train`` command line); its model is built
from the config's ``model`` section for 1×28×28 images and 10 classes and, when it has ``prepare`` (NFE), fissioned
on random batches (the masks differ from a real run's, their counts do not). Timings interleave the models in rounds
(median), so load drift hits all alike: compare ratios when the machine is busy.

    python benchmarks/nfe_costs.py                       # batch 128, 3 rounds
    python benchmarks/nfe_costs.py --json nfe_costs.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from omegaconf import OmegaConf

from selfens_core.config import load_config
from selfens_core.factory import build_component, build_model
from selfens_core.metrics import count_flops

NFE = "configs/nfe-resnet10t-fmnist.yaml"
SINGLE = "configs/nfe-single-resnet10t-fmnist.yaml"
DEEP = "configs/nfe-deep-ensemble-resnet10t-fmnist.yaml"
FISSION_ONLY = ["model.args.sparsity=0", "model.args.channels=[16,32,64,128]", "model.args.stem_width=8"]
RUNS = {
    "single": (SINGLE, []),
    "deep ensemble N=2": (DEEP, ["model.args.num_members=2", "model.args.channels=[12,24,48,92]"]),
    "deep ensemble N=3": (DEEP, []),
    "NFE N=2 snip 0.5": (NFE, ["model.args.num_members=2"]),
    "NFE N=3 snip 0.5": (NFE, []),
    "NFE N=2 fission only": (NFE, ["model.args.num_members=2", *FISSION_ONLY]),
    "NFE N=3 fission only": (NFE, FISSION_ONLY),
}


def build(config: str, overrides: list[str], batch: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    cfg = load_config(config, overrides)
    model = build_model(cfg.model.name, num_classes=10, in_chans=1, **OmegaConf.to_container(cfg.model.args))
    model.pretrained_cfg["input_size"] = (1, 28, 28)
    if hasattr(model, "prepare"):
        model.prepare(model, iter([(torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,)))] * 4))
    distiller = build_component("distillers", cfg.distiller.name or "independent",
                                OmegaConf.to_container(cfg.distiller.args))
    return model, distiller


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="training steps (and inference batches) per round")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    rows, runs = {}, {}
    for name, (config, overrides) in RUNS.items():
        model, distiller = build(config, overrides, args.batch)
        k = model.num_members
        model.eval()
        effective = model.effective_cost(k) or {"flops": count_flops(model, x[:1]),
                                                "params": sum(p.numel() for p in model.parameters())}
        rows[name] = {"members": k, "dense_mflops": count_flops(model, x[:1]) / 1e6,
                      "effective_mflops": effective["flops"] / 1e6,
                      "dense_params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                      "effective_params_m": effective["params"] / 1e6, "train_images_s": [], "infer_images_s": []}
        runs[name] = (model, distiller, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True))
    for _ in range(args.rounds):
        for name, (model, distiller, optimizer) in runs.items():
            model.train()
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer.zero_grad(set_to_none=True)
                sum(distiller(model(x), y).values()).backward()
                optimizer.step()
            rows[name]["train_images_s"].append(args.steps * args.batch / (time.perf_counter() - start))
            model.eval()
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(args.steps):
                    model.predict(x)
            rows[name]["infer_images_s"].append(args.steps * args.batch / (time.perf_counter() - start))
    print(f"{'configuration':22s} {'MFLOP dense':>11s} {'effective':>9s} {'M params':>8s} {'effective':>9s} "
          f"{'train img/s':>11s} {'infer img/s':>11s}")
    for name, row in rows.items():
        row["train_images_s"] = statistics.median(row["train_images_s"])
        row["infer_images_s"] = statistics.median(row["infer_images_s"])
        print(f"{name:22s} {row['dense_mflops']:11.1f} {row['effective_mflops']:9.1f} {row['dense_params_m']:8.3f} "
              f"{row['effective_params_m']:9.3f} {row['train_images_s']:11.0f} {row['infer_images_s']:11.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
