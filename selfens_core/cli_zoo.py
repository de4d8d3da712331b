"""``selfens zoo``: list, inspect, pull, export and push pretrained entries."""
from __future__ import annotations

import argparse
import fnmatch
import json
import time


def _list(args: argparse.Namespace) -> None:
    from .zoo import entries

    rows = [e for n, e in sorted(entries().items()) if fnmatch.fnmatchcase(n, args.pattern)]
    print(f"{'entry':<32} {'default':>7} {'members':>7} {'acc':>7} {'bundled':>7}  repo@revision")
    for e in rows:
        s = e.summary
        acc = f"{100 * s['acc']:.2f}" if "acc" in s else "-"
        print(f"{e.full_name:<32} {'yes' if e.default else '':>7} {s.get('num_members', '-'):>7} {acc:>7} "
              f"{'yes' if e.bundled else 'no':>7}  {e.repo_id}@{(e.revision or 'unpublished')[:12]}")


def _info(args: argparse.Namespace) -> None:
    from .zoo import resolve

    entry = resolve(args.name)
    print(json.dumps({**entry.to_manifest(), "directory": str(entry.directory), "source": entry.source,
                      "bundled": entry.bundled}, indent=2))


def _pull(args: argparse.Namespace) -> None:
    from .zoo import fetch, resolve

    entry = resolve(args.name)
    started = time.perf_counter()
    directory, where = fetch(entry)
    print(f"{entry.full_name}: {len(entry.files)} files verified (sha256) from {where} in "
          f"{time.perf_counter() - started:.1f}s: {directory}")


def _export(args: argparse.Namespace) -> None:
    from .publish import export_run

    name, _, tag = args.name.partition(".")
    entry = export_run(args.run_dir, name=name, tag=tag or args.tag, zoo_dir=args.zoo_dir, repo_id=args.repo,
                       default=args.default, dtype=args.dtype, eval_subset=args.subset, data_root=args.data_root,
                       notes=args.notes, overwrite=args.overwrite)
    s = entry.summary
    print(f"wrote {entry.directory}: {', '.join(entry.files)} and {entry.directory / 'manifest.json'}")
    full = f", {100 * s['acc']:.2f}% ({s['num_members']} members)" if s["num_members"] > 1 else ""
    print(f"test accuracy of the exported weights: {100 * s['acc_one_member']:.2f}% (1 member){full} on "
          f"{s['test_images']} images")


def _push(args: argparse.Namespace) -> None:
    from .publish import push_entry

    entry = push_entry(args.name, repo_id=args.repo, private=args.private)
    print(f"pushed {entry.full_name} to {entry.repo_id} at {entry.revision}; manifest updated")


def add_parser(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="pretrained entries: list, info, pull, export, push")
    commands = zoo.add_subparsers(dest="zoo_command", required=True)

    p = commands.add_parser("list", help="list zoo entries")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern over NAME.TAG")
    p.set_defaults(func=_list)

    p = commands.add_parser("info", help="an entry's manifest and where it lives")
    p.add_argument("name", help="NAME or NAME.TAG")
    p.set_defaults(func=_info)

    p = commands.add_parser("pull", help="download (or find cached or bundled) and verify an entry's files")
    p.add_argument("name", help="NAME or NAME.TAG")
    p.set_defaults(func=_pull)

    p = commands.add_parser("export", help="turn a run directory into a zoo entry (Hub layout, card, manifest)")
    p.add_argument("run_dir", help="a run directory made by `selfens train`")
    p.add_argument("--name", required=True, help="NAME.TAG, e.g. resnet10t.fmnist")
    p.add_argument("--tag", default="", help="the tag, if --name has none")
    p.add_argument("--zoo-dir", default="zoo", help="where entries live (default: ./zoo)")
    p.add_argument("--repo", default=None, help="Hub repo id (default: selfens/NAME.TAG)")
    p.add_argument("--default", action="store_true", help="make this tag NAME's default")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="storage dtype of the weights (the card is measured on what is stored)")
    p.add_argument("--subset", type=int, default=None, help="evaluate on a test subset (quick checks)")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    p.add_argument("--notes", default="", help="markdown for the model card (e.g. the budget against published "
                   "baselines)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an entry (or run) already in ZOO_DIR/NAME.TAG: its files are written anew")
    p.set_defaults(func=_export)

    p = commands.add_parser("push", help="upload a bundled entry to the Hub and pin the commit in its manifest")
    p.add_argument("name", help="NAME or NAME.TAG")
    p.add_argument("--repo", default=None, help="Hub repo id (default: the manifest's)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.set_defaults(func=_push)
