"""How far averaging zoo entries goes: the test accuracy of every combination of the given entries (issue 14).

Each entry is loaded by name (``selfens_core.load``) and run once over the test split; its full-ensemble prediction
is kept, and every combination of two or more entries is scored by the mean of their log-probabilities (for
single-network entries the same argmax as the mean of their logits). It answers "would more members of these
recipes reach a target?" without training a SuperNet for each subset: the merge layer starts from this mean and, on
this dataset, stays within 0.2 point of it (docs/results.md, SuperNet).

    python benchmarks/zoo_combinations.py resnet10t.fmnist resnet10t.fmnist-seed2 resnet10t.fmnist-seed3
    python benchmarks/zoo_combinations.py 'resnet10t.fmnist*' hne-mobilenetv2.fmnist --flip --min-size 3

The combinations are scored on the test split itself, so the best of them is an optimistic estimate (it is picked
on the data it is scored on); use it as a ceiling, not as a result. ``--flip`` adds each entry's prediction on the
horizontally flipped images (test-time augmentation, twice the inference cost).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from fnmatch import fnmatchcase

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("entries", nargs="+", help="zoo names (NAME.TAG) or fnmatch patterns over them")
    parser.add_argument("--flip", action="store_true", help="also average each entry over flipped images")
    parser.add_argument("--min-size", type=int, default=2, help="smallest combination printed (default: 2)")
    parser.add_argument("--data-root", default=None, help="where the dataset files are")
    args = parser.parse_args()

    import selfens_core
    from selfens_core.data import iterate_batches, load_dataset
    from selfens_core.zoo import entries

    known = sorted(entries())
    names = [n for pattern in args.entries for n in known if fnmatchcase(n, pattern)]
    missing = [p for p in args.entries if not any(fnmatchcase(n, p) for n in known)]
    if missing:
        parser.error(f"no zoo entry matches {missing}; the entries are: {', '.join(known)}")
    names = list(dict.fromkeys(names))

    log_probs: dict[str, torch.Tensor] = {}
    labels, dataset = None, None
    for name in names:
        model = selfens_core.load(name).eval()
        if dataset is None:  # the first entry's dataset, loaded once
            dataset = model.pretrained_cfg["dataset"]
            info, splits = load_dataset(dataset, root=args.data_root)
        elif model.pretrained_cfg["dataset"] != dataset:
            parser.error(f"{name} was trained on {model.pretrained_cfg['dataset']}, {names[0]} on {dataset}: "
                         "only entries of one dataset can be combined")
        batches, targets = [], []
        with torch.no_grad():
            for x, y in iterate_batches(splits["test"], info, batch_size=500, train=False, augment=False, seed=0,
                                        epoch=0):
                scores = model.predict(x).clamp_min(1e-12).log()
                if args.flip:
                    scores = scores + model.predict(x.flip(3)).clamp_min(1e-12).log()
                batches.append(scores)
                targets.append(y)
        log_probs[name], labels = torch.cat(batches), torch.cat(targets)
        print(f"{name}: {100 * accuracy(log_probs[name], labels):.2f}%", flush=True)

    print(f"\n| combination | size | test accuracy (%){' (with flips)' if args.flip else ''} |\n|---|---|---|")
    for size in range(max(args.min_size, 2), len(names) + 1):
        for combination in itertools.combinations(names, size):
            summed = sum(log_probs[n] for n in combination)
            print(f"| {' + '.join(combination)} | {size} | {100 * accuracy(summed, labels):.2f} |")
    return 0


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return (scores.argmax(1) == labels).float().mean().item()


if __name__ == "__main__":
    sys.exit(main())
