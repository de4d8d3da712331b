"""Re-evaluate every zoo entry as a user gets it, and print the zoo table (docs/zoo.md, issue 14).

Each entry is loaded by name through ``selfens_core.load`` with ``HF_HUB_OFFLINE=1`` and an empty Hugging Face
cache, so the bundled copy is verified against its manifest's sha256 and loaded; it is then evaluated on the full
test split of its dataset (every member budget) and compared with the accuracy its manifest and card state. Run it
from a fresh clone to check that what the repository ships is what the cards promise:

    python benchmarks/zoo_reevaluate.py                 # every entry
    python benchmarks/zoo_reevaluate.py 'hne-*'         # fnmatch pattern over NAME.TAG

The exit status is 1 when any entry's measured accuracy differs from its card's by more than ``--tolerance``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern over NAME.TAG (default: all)")
    parser.add_argument("--data-root", default=None, help="where the dataset files are")
    parser.add_argument("--tolerance", type=float, default=0.001, help="allowed |measured - card| accuracy")
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=tempfile.mkdtemp(prefix="selfens-empty-hf-cache-"))

    import selfens_core
    from selfens_core.data import load_dataset
    from selfens_core.evaluation import evaluate
    from selfens_core.zoo import entries, list_pretrained

    print("| entry | members | test accuracy per member budget (%) | card (%) | parameters | file | training "
          "(from the card) | eval s |")
    print("|---|---|---|---|---|---|---|---|")
    failed = []
    for name in list_pretrained(args.pattern):
        entry = entries()[name]
        started = time.perf_counter()
        model = selfens_core.load(name)
        info, splits = load_dataset(model.pretrained_cfg["dataset"], root=args.data_root)
        metrics = evaluate(model, splits["test"], info)
        seconds = time.perf_counter() - started
        measured = {k: m["acc"] for k, m in metrics["members"].items()}
        card = entry.summary["acc"]
        if abs(measured[max(measured, key=int)] - card) > args.tolerance:
            failed.append(name)
        weights = entry.files["model.safetensors"]["size"] / 1e6
        card_text = (entry.directory / "README.md").read_text() if entry.bundled else ""
        training = re.search(r"Training: (\d+) epochs, [\d.]+ minutes as logged, ([\d.]+) at", card_text)
        print(f"| `{name}` | {model.num_members} | {' / '.join(f'{k}: {100 * a:.2f}' for k, a in measured.items())} "
              f"| {100 * card:.2f} | {metrics['params'] / 1e6:.2f} M | {weights:.1f} MB "
              f"({entry.summary.get('weights_dtype', 'float32')}) | "
              f"{f'{training[1]} epochs, {training[2]} min' if training else 'see the card'} | {seconds:.0f} |",
              flush=True)
    if failed:
        print(f"measured accuracy differs from the card by more than {args.tolerance}: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
