"""Re-evaluate every zoo entry as a user gets it, and print the zoo table (docs/zoo.md, issue 14).

Each entry is loaded by name through ``selfens_core.load`` with ``HF_HUB_OFFLINE=1`` and an empty Hugging Face
cache, so the bundled copy is verified against its manifest's sha256 and loaded; it is then evaluated on the full
test split of its dataset (every member budget) and its full-ensemble accuracy compared with the one its manifest
states (the card's, measured by `selfens zoo export`). Run it from a fresh clone to check that what the repository
ships is what the cards promise:

    python benchmarks/zoo_reevaluate.py                 # every entry
    python benchmarks/zoo_reevaluate.py 'hne-*'         # fnmatch pattern over NAME.TAG

The exit status is 1 when an entry cannot be loaded or evaluated, or its accuracy differs from its manifest's by more
than ``--tolerance``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from fnmatch import fnmatchcase


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern over NAME.TAG (default: all)")
    parser.add_argument("--data-root", default=None, help="where the dataset files are")
    parser.add_argument("--tolerance", type=float, default=0.001, help="allowed |measured - manifest| accuracy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="selfens-empty-hf-cache-") as cache:
        os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=cache)
        return reevaluate(args.pattern, args.data_root, args.tolerance)


def reevaluate(pattern: str, data_root: str | None, tolerance: float) -> int:
    # imported only now: huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE when it is imported
    import selfens_core
    from selfens_core.data import load_dataset
    from selfens_core.evaluation import evaluate
    from selfens_core.zoo import entries

    print("| entry | members | test accuracy per member budget (%) | manifest (%) | parameters | file | training "
          "(idle estimate) | load + eval s |")
    print("|---|---|---|---|---|---|---|---|")
    failed = []
    for name, entry in sorted(entries().items()):
        if not fnmatchcase(name, pattern):
            continue
        started = time.perf_counter()
        try:
            model = selfens_core.load(name)
            info, splits = load_dataset(model.pretrained_cfg["dataset"], root=data_root)
            metrics = evaluate(model, splits["test"], info)
        except Exception as error:  # one broken entry must not hide the others' results
            failed.append(f"{name} ({type(error).__name__}: {error})")
            continue
        summary = entry.summary
        measured, stated = {k: m["acc"] for k, m in metrics["members"].items()}, summary["acc"]
        if abs(measured[max(measured, key=int)] - stated) > tolerance:
            failed.append(f"{name} (measured {measured}, manifest {stated})")
        training = (f"{summary['epochs']} epochs, {summary['training_minutes']} min" if "training_minutes" in summary
                    else "see the card")
        print(f"| `{name}` | {model.num_members} | {' / '.join(f'{k}: {100 * a:.2f}' for k, a in measured.items())} "
              f"| {100 * stated:.2f} | {metrics['params'] / 1e6:.2f} M | "
              f"{entry.files['model.safetensors']['size'] / 1e6:.1f} MB ({summary.get('weights_dtype', 'float32')}) "
              f"| {training} | {time.perf_counter() - started:.0f} |", flush=True)
    for failure in failed:
        print(f"FAILED: {failure}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
