"""MEAL on Fashion-MNIST at a short CPU budget: the tables of plugins/meal/README.md.

Table 1 — one student network (default timm's ``test_resnet``: 0.37M parameters, 6.7 MFLOPs at 28×28) trained
alone, with plain KD from one teacher, and with MEAL from all the zoo's Fashion-MNIST teachers; against the teachers
and their averaged ensemble. Accuracy on the full test set and inference FLOPs per image. (MobileNetV2 ×0.5 and
LCNet ×0.5 barely train at this budget and lr 0.1: 16% and 11% test accuracy after 40 steps, test_resnet 72%.)

Table 2 — a small version of the paper's Table 1 ablation, with the zoo's three timm teachers (the ones that offer
intermediate taps), one drawn per iteration: L1 / L2 / CE on the logits, + intermediate taps, + adversarial.

Every run is ``selfens train`` in its own process, then ``selfens eval`` on the test set; finished runs are skipped
and interrupted ones resumed, so the script can be re-run after a stop. It writes ``OUT/tables.md`` and
``OUT/tables.json``. ``--dry-run`` prints the commands only.

    OMP_NUM_THREADS=1 python benchmarks/meal_tables.py --out runs/meal-tables            # subset 10000, 3 epochs
    python benchmarks/meal_tables.py --out /tmp/smoke --subset 512 --epochs 1 --eval-subset 500 --only student,kd
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

TEACHERS = ["resnet10t.fmnist", "mobilenetv2_100.fmnist", "efficientnet_b0.fmnist", "hne-resnet-small.fmnist",
            "hne-mobilenetv2.fmnist"]
TIMM_TEACHERS = TEACHERS[:3]
RECIPE = ["train.lr=0.1", "train.warmup_epochs=0.3", "train.channels_last=true"]  # the zoo entries' recipe


def _list(values: list[str]) -> str:
    return "[" + ",".join(values) + "]"  # OmegaConf reads [a.b,local-dir:/x,hf-hub:o/r@v] as strings


def runs(args: argparse.Namespace) -> dict[str, tuple[str, list[str]]]:
    """Run name → (config, overrides)."""
    student = [f"model.name=deep-ensemble-{args.student}", "model.args.num_members=1"]
    ablation_teachers = f"distiller.args.teachers={_list(args.ablation_teachers)}"
    logits_only = ["distiller.args.taps=1", "distiller.args.reductions=null", "distiller.args.weights=[1.0]",
                   "distiller.args.adversarial=none"]
    with_taps = ["distiller.args.taps=3", "distiller.args.weights=[0.01,0.05,1.0]", "distiller.args.missing_taps=error"]
    table = {
        "student": ("configs/deep-ensemble-fmnist.yaml", student),
        "kd": ("configs/meal-kd-fmnist.yaml", [*student, f"distiller.args.teachers={_list([args.kd_teacher])}"]),
        "meal": ("configs/meal-fmnist.yaml", [*student, f"distiller.args.teachers={_list(args.teachers)}"]),
        "meal-v2": ("configs/meal-v2-fmnist.yaml", [*student, f"distiller.args.teachers={_list(args.teachers)}"]),
        "abl-l1": ("configs/meal-fmnist.yaml", [*student, ablation_teachers, *logits_only, "distiller.args.loss=l1"]),
        "abl-l2": ("configs/meal-fmnist.yaml", [*student, ablation_teachers, *logits_only, "distiller.args.loss=l2"]),
        "abl-ce": ("configs/meal-fmnist.yaml", [*student, ablation_teachers, *logits_only, "distiller.args.loss=ce"]),
        "abl-ce-mid": ("configs/meal-fmnist.yaml", [*student, ablation_teachers, *with_taps,
                                                    "distiller.args.adversarial=none"]),
        "abl-ce-mid-adv": ("configs/meal-fmnist.yaml", [*student, ablation_teachers, *with_taps,
                                                        "distiller.args.adversarial=alternating"]),
        "abl-ce-mid-grl": ("configs/meal-fmnist.yaml", [*student, ablation_teachers, *with_taps,
                                                        "distiller.args.adversarial=grl"]),
        "abl-ce-mid-joint": ("configs/meal-fmnist.yaml", [*student, ablation_teachers, *with_taps,
                                                          "distiller.args.adversarial=joint"]),
    }
    budget = [f"data.subset={args.subset}", f"train.epochs={args.epochs}", *RECIPE, *args.override]
    return {name: (config, [*overrides, *budget]) for name, (config, overrides) in table.items()}


DEFAULT_RUNS = ["student", "kd", "meal", "abl-l1", "abl-l2", "abl-ce", "abl-ce-mid", "abl-ce-mid-adv"]
ABLATION = [  # run, L1, L2, CE, intermediate, adversarial
    ("abl-l1", "✓", "", "", "", ""), ("abl-l2", "", "✓", "", "", ""), ("abl-ce", "", "", "✓", "", ""),
    ("abl-ce-mid", "", "", "✓", "✓", ""), ("abl-ce-mid-adv", "", "", "✓", "✓", "alternating"),
    ("abl-ce-mid-grl", "", "", "✓", "✓", "grl"), ("abl-ce-mid-joint", "", "", "✓", "✓", "joint (original code)"),
]


def command(bin_dir: Path, *parts: str) -> list[str]:
    return [str(bin_dir / "selfens"), *parts]


def execute(cmd: list[str], dry_run: bool, log: Path | None = None) -> float:
    print("$", shlex.join(cmd), flush=True)
    if dry_run:
        return 0.0
    started = time.perf_counter()
    with open(log, "a") if log else open(os.devnull, "w") as out:
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def train_and_eval(name: str, config: str, overrides: list[str], args: argparse.Namespace, bin_dir: Path) -> dict:
    run, evaluated = args.out / name, args.out / f"{name}-eval"
    seconds = {}
    if not (run / "model.safetensors").exists() or args.dry_run:
        resume = ["--resume"] if (run / "checkpoints").is_dir() else []
        seconds["train"] = execute(command(bin_dir, "train", config, "--out", str(run), "--quiet", *resume,
                                           *overrides), args.dry_run, args.out / f"{name}.log")
    if not (evaluated / "metrics.json").exists() or args.dry_run:
        seconds["eval"] = execute(command(bin_dir, "eval", str(run), "--data", "fashion-mnist", "--out",
                                          str(evaluated), *_eval_subset(args)), args.dry_run, args.out / f"{name}.log")
    if args.dry_run:
        return {}
    metrics = json.loads((evaluated / "metrics.json").read_text())
    trained = json.loads((run / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"acc": metrics["members"]["1"]["acc"], "nll": metrics["members"]["1"]["nll"],
            "flops": metrics["members"]["1"]["flops"], "params": metrics["params"],
            "train_seconds": sum(e["seconds"] for e in epochs), "last_loss": epochs[-1]["loss"],
            "distiller": trained.get("distiller"), "wall_seconds": seconds}


def _eval_subset(args: argparse.Namespace) -> list[str]:
    return ["--subset", str(args.eval_subset)] if args.eval_subset else []


def teacher_ensemble(args: argparse.Namespace) -> dict:
    """Each teacher and the averaged ensemble of all of them, on the same test images."""
    import torch
    from selfens_plugins.meal.teachers import TeacherEnsemble

    from selfens_core.data import load_dataset
    from selfens_core.evaluation import evaluate

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    info, splits = load_dataset("fashion-mnist", subset=args.eval_subset)
    ensemble = TeacherEnsemble.load(args.teachers)
    metrics = evaluate(ensemble, splits["test"], info)
    flops = [metrics["members"][str(k)]["flops"] for k in range(1, len(args.teachers) + 1)]
    return {"teachers": [{"ref": ref, "acc": acc, "flops": f - (flops[i - 1] if i else 0),
                          "origin": ensemble.teachers[i].pretrained_cfg.get("origin")}
                         for i, (ref, acc, f) in enumerate(zip(args.teachers, metrics["member_acc"], flops))],
            "ensemble": {"acc": metrics["members"][str(len(args.teachers))]["acc"],
                         "nll": metrics["members"][str(len(args.teachers))]["nll"], "flops": flops[-1]},
            "num_samples": metrics["num_samples"]}


def tables(results: dict, teachers: dict | None, args: argparse.Namespace) -> str:
    def row(label: str, r: dict, note: str = "") -> str:
        return f"| {label} | {100 * r['acc']:.2f} | {r['flops'] / 1e6:.1f} | {note} |"

    lines = [f"Fashion-MNIST, {args.subset}-image training subset, {args.epochs} epochs, student "
             f"`{args.student}`; accuracy on {teachers['num_samples'] if teachers else 'the'} test images.", "",
             "| model | acc (%) | MFLOPs / image | |", "|---|---|---|---|"]
    labels = {"student": ("student trained alone", "labels"),
              "kd": ("student, plain KD from one teacher", f"{args.kd_teacher}, T=4, α=0.5"),
              "meal": ("student, MEAL from all teachers", "random teacher per step, 3 taps, adversarial"),
              "meal-v2": ("student, MEAL-V2 (averaged teachers)", "logits tap, adversarial")}
    for name, (label, note) in labels.items():
        if name in results:
            lines.append(row(label, results[name], note))
    if teachers:
        lines.append(row("teachers' averaged ensemble", teachers["ensemble"], f"{len(args.teachers)} teachers"))
        lines.extend(row(f"teacher `{t['ref']}`", t) for t in teachers["teachers"])
    lines += ["", f"Ablation (teachers {', '.join(args.ablation_teachers)}, one drawn per step):", "",
              "| L1 | L2 | CE | intermediate | adversarial | acc (%) |", "|---|---|---|---|---|---|"]
    for name, *marks in ABLATION:
        if name in results:
            lines.append("| " + " | ".join(marks) + f" | {100 * results[name]['acc']:.2f} |")
    if "student" in results:
        lines.append(f"| (student alone, labels) | | | | | {100 * results['student']['acc']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/meal-tables"))
    parser.add_argument("--student", default="test_resnet", help="timm name of the student network")
    parser.add_argument("--teachers", type=lambda s: s.split(","), default=TEACHERS)
    parser.add_argument("--kd-teacher", default=TEACHERS[0])
    parser.add_argument("--ablation-teachers", type=lambda s: s.split(","), default=TIMM_TEACHERS)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eval-subset", type=int, default=None, help="evaluate on fewer test images (smoke tests)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help=f"runs to do (default {','.join(DEFAULT_RUNS)}; also meal-v2, abl-ce-mid-grl, "
                             "abl-ce-mid-joint), plus 'teachers' for the teachers' ensemble")
    parser.add_argument("--override", action="append", default=[], help="extra config override for every run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    selected = args.only or [*DEFAULT_RUNS, "teachers"]
    known = runs(args)
    unknown = [n for n in selected if n not in known and n != "teachers"]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; known: {', '.join(known)}, teachers")
    args.out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    results = {}
    for name in selected:
        if name != "teachers":
            results[name] = train_and_eval(name, *known[name], args, bin_dir)
    teachers = None
    if "teachers" in selected:
        print(f"# teachers' averaged ensemble: {', '.join(args.teachers)}", flush=True)
        teachers = None if args.dry_run else teacher_ensemble(args)
    if args.dry_run:
        return
    (args.out / "tables.json").write_text(json.dumps({"runs": results, "teachers": teachers,
                                                      "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    text = tables(results, teachers, args)
    (args.out / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
