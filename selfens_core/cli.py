"""The ``selfens`` command: train, eval, list, plugins, zoo."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from . import cli_zoo

if TYPE_CHECKING:
    from .ensemble import SelfEnsemble

DEFAULT_EVAL_DATA = "fashion-mnist"  # for a model that names no dataset (an untrained one)
EVAL_METRICS, EVAL_PLOT = "metrics.json", "budget.png"  # what `selfens eval` writes into --out


_ABSENT = object()


def _train(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    from .config import load_config
    from .distributed import launched_world
    from .engine import train
    from .evaluation import format_budget_table

    if args.allow_change and not args.resume:
        raise SystemExit(f"error: --allow-change {' '.join(args.allow_change)} applies to --resume only (a new run "
                         "takes its config as given)")
    if args.nproc < 1:
        raise SystemExit(f"error: --nproc {args.nproc}: the number of processes must be at least 1")
    if args.nproc > 1 and "WORLD_SIZE" in os.environ:
        raise SystemExit("error: --nproc launches torchrun, and this process already runs under it; leave --nproc out")
    cfg = load_config(args.config, args.overrides)
    for key in args.allow_change:  # a typo would allow nothing, and the resume would be refused for the real key
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            warnings.warn(f"--allow-change {key}: this config has no such key, so it allows no change (misspelt?)",
                          stacklevel=1)
    if args.nproc > 1:
        sys.exit(_launch(args.nproc, args.argv))
    metrics = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_change,
                    progress=not args.quiet)
    if not launched_world().main:  # rank 0 reports
        return
    print(f"\n{cfg.model.name} on {cfg.data.name} test set ({metrics['num_samples']} images):")
    print(format_budget_table(metrics))
    print(f"run directory: {args.out}")


def _launch(nproc: int, argv: list[str]) -> int:
    """Run this ``selfens train`` command (``argv`` without ``--nproc``) in ``nproc`` processes on this machine, as
    ``torchrun --standalone --nproc-per-node nproc -m selfens_core.cli train ...``; returns its exit status."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "selfens_core.cli", *argv]
    print(f"launching {nproc} processes: torchrun --standalone --nproc-per-node={nproc} -m selfens_core.cli "
          + " ".join(argv), flush=True)
    return subprocess.run(command).returncode


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def _eval(args: argparse.Namespace) -> None:
    from . import create, load
    from .data import load_dataset
    from .evaluation import evaluate, format_budget_table, plot_budget
    from .pretrained import load_pretrained
    from .rundir import check_output_target
    from .zoo import verify_local

    out = Path(args.out)
    check_output_target(out, (EVAL_METRICS, EVAL_PLOT), command="`selfens eval`", overwrite=args.overwrite,
                        elsewhere="choose another --out", own_output=(EVAL_METRICS, EVAL_PLOT))
    model = None
    if _is_pretrained_ref(args.model):  # a zoo name wins over a folder of that name, with a warning
        model = load(args.model)
    elif Path(args.model).is_dir():
        verify_local(Path(args.model))  # against its manifest.json, when it has one
        model = load_pretrained(args.model)
    else:
        _check_untrained_name(args.model)  # before any data is read
    dataset = _eval_dataset(args.data, model)
    info, splits = load_dataset(dataset, root=args.data_root, subset=args.subset)
    if model is None:
        warnings.warn(f"{args.model!r} is not a run directory: evaluating an untrained model", stacklevel=1)
        model = create(args.model, num_classes=info.num_classes, in_chans=info.in_chans).eval()
    cfg = model.pretrained_cfg
    if (cfg["num_classes"], cfg["in_chans"]) != (info.num_classes, info.in_chans):
        raise SystemExit(f"error: the model takes {cfg['in_chans']}-channel images of {cfg['num_classes']} classes; "
                         f"{dataset} has {info.in_chans} channel(s) and {info.num_classes} classes")
    metrics = evaluate(model, splits["test"], info, progress=True)
    metrics.update(split="test", dataset=dataset, model=args.model)
    out.mkdir(parents=True, exist_ok=True)
    (out / EVAL_METRICS).write_text(json.dumps(metrics, indent=2))
    plot_budget(metrics, str(out / EVAL_PLOT), title=f"{cfg.get('architecture', args.model)} on {dataset}")
    print(format_budget_table(metrics))
    print(f"wrote {out / EVAL_METRICS} and {out / EVAL_PLOT}")


def _check_untrained_name(ref: str) -> None:
    """Refuse a ``selfens eval`` reference that is neither a zoo entry, a folder nor a registered model name,
    saying which of the three it looked like and what is close to it."""
    import difflib

    from .plugins import registries
    from .registry import UnknownNameError
    from .zoo import list_pretrained

    if Path(ref).exists():
        raise SystemExit(f"error: {ref} is not a folder: give a run directory, a model folder or a model name")
    if "/" in ref or ref.startswith("."):
        raise SystemExit(f"error: {ref} does not exist: give a run directory, a model folder or a model name")
    try:
        registries().models.resolve(ref)
    except UnknownNameError as error:
        close = difflib.get_close_matches(ref, list_pretrained(), n=3, cutoff=0.8)
        pretrained = f"Zoo entries close to it: {', '.join(close)}. " if close else ""
        raise SystemExit(f"error: {ref!r} is no zoo entry, folder or model name. {pretrained}{error}") from None


def _eval_dataset(requested: str | None, model: SelfEnsemble | None) -> str:
    """``--data`` when given, else the dataset the model was trained on, else the default; printed with why."""
    trained_on = model.pretrained_cfg.get("dataset") if model is not None else None
    if requested:
        dataset = requested
        why = "--data" + (f"; the model was trained on {trained_on}" if trained_on not in (None, requested) else "")
    elif trained_on:
        dataset, why = trained_on, "the dataset the model was trained on; choose another with --data"
    else:
        dataset, why = DEFAULT_EVAL_DATA, "the default: the model names no dataset; choose one with --data"
    print(f"evaluating on {dataset} ({why})")
    return dataset


def _is_pretrained_ref(ref: str) -> bool:
    from .zoo import is_reference

    return is_reference(ref)


def _list(args: argparse.Namespace) -> None:
    from .plugins import registries

    models, pattern = registries().models, args.pattern
    names = models.names(pattern)
    exact = not any(c in pattern for c in "*?[")
    if exact and not names and models.family(pattern) is None:
        models.resolve(pattern)  # UnknownNameError: close matches, what exists, plugins not loaded
    for name in names or ([pattern] if exact else []):
        print(name)
    families = models.describe_families(pattern)
    if families:
        print("families (each builds its prefix + any name its rule accepts: more than the examples listed):")
    for family in families:
        examples = f"; e.g. {', '.join(family['examples'])}" if family["examples"] else ""
        print(f"  {family['pattern']}: {family['accepts']}{examples} (plugin {family['plugin']})")
    if not names and not exact:
        print(f"no registered name matches {pattern!r}" + (" (a family above may build one)" if families else ""),
              file=sys.stderr)


def _plugins(args: argparse.Namespace) -> None:
    from .plugins import registries

    report = registries().report()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for plugin in report["plugins"]:
        origin = plugin["distribution"] or "in-process"
        flags = [origin] + ["built in"] * plugin["builtin"] + ["DISABLED"] * plugin["disabled"]
        print(f"{plugin['name']} {plugin['version'] or '-'} ({', '.join(flags)})")
        if plugin["hooks"]:
            print(f"  hooks: {', '.join(plugin['hooks'])}")
        for kind, names in plugin["registered"].items():
            print(f"  {kind}: {', '.join(names)}")
        for failure in plugin["failures"]:
            print(f"  FAILED: {failure}")
    for problem in report["problems"]:  # they belong to no plugin (SELFENS_DISABLE_PLUGINS)
        print(f"PROBLEM: {problem}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="selfens", description="Train, evaluate and list self-ensembles.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--out", required=True, help="run directory (config, metrics, checkpoints, weights)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run or trained model in --out (its selfens files and checkpoints; other files "
                   "are kept)")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: accept a change of config KEY that changes the result (e.g. train.epochs); "
                   "recorded in resumes.jsonl and metrics.json. Repeat for several keys")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train in N processes on this machine (torchrun --standalone; one GPU each on CUDA); "
                   "train.batch_size is the global batch. For several machines run torchrun yourself (docs/engine.md)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides (OmegaConf dotlist), e.g. train.epochs=2 data.subset=1000")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a trained model at every member budget")
    p.add_argument("model", help="a run directory, a zoo entry (NAME[.TAG], hf-hub:ORG/REPO[@REV], local-dir:PATH), "
                   "or a registered model name (untrained)")
    p.add_argument("--data", default=None,
                   help=f"dataset name (default: the one the model was trained on, else {DEFAULT_EVAL_DATA})")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    p.add_argument("--subset", type=int, default=None, help="evaluate on a subset (quick checks)")
    p.add_argument("--out", required=True, help="directory for metrics.json and budget.png")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out that holds a run or a trained model, replacing its metrics.json")
    p.set_defaults(func=_eval)

    p = sub.add_parser("list", help="list registered model names")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. '*resnet*'")
    p.set_defaults(func=_list)

    p = sub.add_parser("plugins", help="list plugins: version, hooks, what each registered, failures; then the "
                       "problems that belong to no plugin (SELFENS_DISABLE_PLUGINS)")
    p.add_argument("--json", action="store_true", help='print JSON: {"plugins": [...], "problems": [...]}')
    p.set_defaults(func=_plugins)

    cli_zoo.add_parser(sub)

    argv = sys.argv[1:] if argv is None else argv
    args, extra = parser.parse_known_args(argv)  # overrides may follow the options
    if getattr(args, "out", None) == "":
        parser.error("--out is empty: name a folder (is the variable you passed set?)")
    args.argv = _without_nproc(argv)
    if args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit("interrupted; continue with: selfens train CONFIG --out DIR --resume" if args.command == "train"
                 else "interrupted")
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        sys.exit(_error_message(error))


def _error_message(error: Exception) -> str | int:
    """What a failed command prints. Among several processes (torchrun) the failing rank says which it is; a
    config error, which every rank meets alike, is said by rank 0 alone (the others exit with status 1)."""
    from .config import ConfigError
    from .distributed import launched_world

    world = launched_world()
    if world.size == 1:
        return f"error: {error}"
    if isinstance(error, ConfigError) and not world.main:
        return 1
    return f"error (rank {world.rank} of {world.size}): {error}"


if __name__ == "__main__":
    main()
