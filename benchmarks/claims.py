"""The machinery of the ``*_claims.py`` scripts: train a claim's runs once per seed, keep their metrics in the
repository, and summarise them across seeds.

A run trains with ``selfens_core.engine`` in ``runs/<claims>/seed<S>/<run>`` (checkpoints: a half-finished run
resumes, so an interrupted script continues where it stopped). When it finishes, its ``metrics.json``,
``metrics.jsonl`` and the ``config.yaml`` it trained with are copied to ``benchmarks/results/<claims>/seed<S>/<run>/``,
which is tracked: the tables survive a fresh clone (``runs/`` does not), and a run kept there is not trained again. A
run several claims compare with (the single network, :data:`SINGLE`) is trained and kept once, under its owner's
name. Training minutes are given at each phase's fastest epoch (``selfens_core.rundir.idle_epoch_seconds``: an
estimate of what the run costs on an otherwise idle machine; on a shared one, several epochs of a run can be
stretched, so that even the median overstates it).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selfens_core import engine
from selfens_core.config import load_config
from selfens_core.rundir import idle_epoch_seconds, read_epoch_log

RESULTS = Path(__file__).parent / "results"

# The CPU scale of the HNE, IENet and MEAL claims (docs/results.md): NFE's recipe for 6 epochs on timm resnet10t with
# small_images at quarter width (16-32-64-128, stem 8: 0.31 M parameters, 28 MFLOP per image), whose single network
# takes about 8 minutes on the idle 2-core CPU and reaches about 92.3%. A run at this scale anneals its learning rate
# to 1% of its peak, so each method is compared converged for its budget, not mid-descent. One memory layout (NCHW)
# for all, so that training times compare.
RECIPE = ("train.epochs=6", "train.batch_size=128", "train.optimizer=sgd", "train.lr=0.1", "train.momentum=0.9",
          "train.nesterov=true", "train.weight_decay=5.0e-4", "train.schedule=piecewise_linear",
          "train.warmup_epochs=0", "train.precise_bn=0", "train.channels_last=false")
SMALL_RESNET10T = ("model.args.small_images=true", "model.args.channels=[16,32,64,128]", "model.args.stem_width=8")


@dataclass(frozen=True)
class Run:
    """One configuration of a claim: a label for the table, a config and its overrides. ``kept_in`` names the
    :class:`Claims` that owns the run (its results folder), for a run several claims share: trained and kept once."""

    label: str
    config: str
    overrides: tuple[str, ...] = ()
    kept_in: str | None = None


# The single network every CPU-scale claim compares with (configs/nfe-single-resnet10t-fmnist.yaml is RECIPE on
# SMALL_RESNET10T), owned by the NFE claims, where it was first trained.
SINGLE = Run("single network 16-32-64-128", "configs/nfe-single-resnet10t-fmnist.yaml", kept_in="nfe-claims")


@dataclass(frozen=True)
class Kept:
    """A finished run of one seed: its final metrics and its epoch records."""

    seed: int
    metrics: dict
    epochs: list[dict]

    @property
    def budgets(self) -> dict[str, dict]:
        """Metrics per member budget ("1", "2", ...), the last being the full ensemble."""
        return self.metrics["members"]

    @property
    def minutes(self) -> float:
        """Training minutes on an otherwise idle machine (``selfens_core.rundir.idle_epoch_seconds``)."""
        return sum(idle_epoch_seconds(self.epochs)) / 60


class Claims:
    """The runs of one claim script, keyed by a short name, trained in the order given."""

    def __init__(self, name: str, runs: dict[str, Run]):
        self.name, self.runs = name, runs

    def _owner_folder(self, root: Path, key: str) -> Path:
        """The folder under ``root`` (``runs/`` or the results) of the claims that own ``key``."""
        return root / (self.runs[key].kept_in or self.name)

    def _folder(self, root: Path, key: str, seed: int) -> Path:
        """``key``'s folder for ``seed`` under ``root``, in its owner's claims."""
        return self._owner_folder(root, key) / f"seed{seed}" / key

    def train(self, key: str, seed: int) -> None:
        """Train ``key`` for ``seed`` unless it is kept, then keep its metrics."""
        kept = self._folder(RESULTS, key, seed)
        if (kept / "metrics.json").exists():
            return
        out = self._folder(Path("runs"), key, seed)
        if not (out / "metrics.json").exists():
            run = self.runs[key]
            print(f"--- training {key} (seed {seed}): {self.command(key, seed)}", flush=True)
            cfg = load_config(run.config, [*run.overrides, f"train.seed={seed}"])
            engine.train(cfg, out, resume=out.is_dir(), progress=False)  # also a run stopped before its first epoch
        kept.mkdir(parents=True, exist_ok=True)
        for file in ("metrics.json", "metrics.jsonl", "config.yaml"):
            shutil.copy(out / file, kept / file)

    def command(self, key: str, seed: int = 0) -> str:
        """The ``selfens train`` command that trains ``key`` for ``seed`` into the folder this script uses (add
        ``--resume`` to continue a run there)."""
        run, out = self.runs[key], self._folder(Path("runs"), key, seed)
        return shlex.join(["selfens", "train", run.config, "--out", str(out), *run.overrides, f"train.seed={seed}"])

    def kept(self, key: str) -> list[Kept]:
        """The finished seeds of ``key``."""
        found = []
        for path in sorted(self._owner_folder(RESULTS, key).glob(f"seed*/{key}/metrics.json")):
            found.append(Kept(int(path.parent.parent.name.removeprefix("seed")), json.loads(path.read_text()),
                              read_epoch_log(path.parent)))
        return found

    def table(self, columns: list[str], row: Callable[[list[Kept]], list[str]]) -> None:
        """Print a markdown table: the run's label, its number of seeds, then ``row(kept)`` for each run with kept
        seeds ("not run yet" for the others)."""
        print("\n| " + " | ".join(["run", "seeds", *columns]) + " |")
        print("|" + "---|" * (len(columns) + 2))
        for key, run in self.runs.items():
            kept = self.kept(key)
            cells = row(kept) if kept else ["not run yet", *[""] * (len(columns) - 1)]
            print("| " + " | ".join([run.label, str(len(kept)), *cells]) + " |")

    def main(self, doc: str, report: Callable[[], None]) -> None:
        """The command line every claims script shares: train what is missing (``--only``, ``--seeds``), then
        ``report()``; ``--report`` only reports."""
        parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--only", nargs="+", choices=list(self.runs), help="these runs (default: all, in order)")
        parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train each run once per seed")
        parser.add_argument("--report", action="store_true", help="print the tables of kept runs; train nothing")
        parser.add_argument("--commands", action="store_true",
                            help="print the `selfens train` command of each run and seed; train nothing")
        args = parser.parse_args()
        if args.commands:
            for seed in args.seeds:
                for key in args.only or self.runs:
                    print(self.command(key, seed))
            return
        if not args.report:
            for seed in args.seeds:
                for key in args.only or self.runs:
                    self.train(key, seed)
        report()


def mean_spread(values: list[float], digits: int, scale: float = 1.0) -> str:
    """``mean`` for one value, ``mean ± half range`` for several (each multiplied by ``scale``)."""
    values = [v * scale for v in values]
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"
