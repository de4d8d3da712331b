"""Retrain every zoo entry at its full budget on one device, export each as a zoo entry and pack them to bring back.

Made for the `device` tool's GPU (issue 14): ``bash scripts/gpu-zoo.sh`` runs this there and leaves the packed entries
in ``$OUT``; here, ``python scripts/zoo_retrain.py --unpack FOLDER`` checks them and puts them into ``zoo/``. On the CPU
it is the same pipeline at smoke size:

    python scripts/zoo_retrain.py --device cpu --smoke --only resnet10t.fmnist meal-resnet10t.fmnist

Entries train in stages: first every entry that needs no other (all at once on a GPU: these models are far too small
to fill one alone), then the entries built from others (the MEAL student from its teachers, the SuperNet from its
members), which read the entries just retrained (``local-dir:`` references to their exported folders; sources not
retrained in this invocation are taken from the zoo; an entry whose retrained source failed is not trained). Each
run trains with
``selfens train`` into ``runs/zoo-retrain/<entry>`` (a second invocation resumes it from its checkpoint), then
``selfens zoo export`` evaluates the stored float16 weights on the test set and writes the entry with its card. The
device tool brings back at most 8 files of 16 MiB, 64 MiB in all, so ``--pack`` writes the entries as one gzipped tar
cut into parts under that size, and ``zoo-retrain.json`` (accuracy, members, wall time per entry) beside them.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
PACK_LIMIT = 15 * 2**20 + 2**19  # bytes per part: under the device tool's 16 MiB a file
PACK_FILES = 4  # parts at most: 62 MiB of the tool's 64, and with zoo-retrain.json and the log within its 8 files


@dataclass(frozen=True)
class Entry:
    """One zoo entry: the recipe that trains it, at the budget a GPU affords."""

    name: str  # NAME.TAG in the zoo
    config: str
    overrides: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # zoo entries its run loads (teachers, members): trained in an earlier stage
    sources_key: str | None = None  # the config key that lists them (required with sources)

    def __post_init__(self) -> None:
        if bool(self.sources) != bool(self.sources_key):
            raise ValueError(f"{self.name}: sources and sources_key go together (the key is where the run reads them)")


_TEACHERS = ("resnet10t.fmnist", "mobilenetv2_100.fmnist", "efficientnet_b0.fmnist", "hne-resnet-small.fmnist",
             "hne-mobilenetv2.fmnist")

# the CPU-scale claims' network (benchmarks/claims.py), so a GPU retrain replaces the CPU entry with the same model
_CPU_SCALE_RESNET10T = ("model.args.small_images=true", "model.args.channels=[16,32,64,128]", "model.args.stem_width=8")

# The single network keeps the CPU entries' half width (1.2 M parameters): the SuperNet over five seeds of it is one
# file of 6.2 M (12.4 MB in float16), within the repository's 20 MB and the device tool's transfer; at full width it
# would be 49 MB. Its members are these five entries, so either source (retrained or bundled) fits it.
_SUPERNET_MEMBERS = ("resnet10t.fmnist", "resnet10t.fmnist-seed1", "resnet10t.fmnist-seed2", "resnet10t.fmnist-seed3",
                     "resnet10t.fmnist-seed4")

PLAN: tuple[Entry, ...] = (
    Entry("resnet10t.fmnist", "configs/resnet10t-fmnist.yaml", ("train.epochs=40",)),
    Entry("resnet10t.fmnist-seed1", "configs/resnet10t-fmnist.yaml",
          ("train.epochs=40", "train.seed=1", "data.random_erasing=0.5")),
    Entry("resnet10t.fmnist-seed2", "configs/resnet10t-fmnist.yaml", ("train.epochs=40", "train.seed=2")),
    Entry("resnet10t.fmnist-seed3", "configs/resnet10t-fmnist.yaml", ("train.epochs=40", "train.seed=3")),
    Entry("resnet10t.fmnist-seed4", "configs/resnet10t-fmnist.yaml", ("train.epochs=40", "train.seed=4")),
    Entry("mobilenetv2_100.fmnist", "configs/mobilenetv2-fmnist.yaml"),
    Entry("efficientnet_b0.fmnist", "configs/mobilenetv2-fmnist.yaml", ("model.name=deep-ensemble-efficientnet_b0",)),
    Entry("hne-resnet10t.fmnist", "configs/hne-resnet10t-fmnist.yaml", ("train.epochs=30",)),
    Entry("hne-mobilenetv2.fmnist", "configs/hne-mobilenetv2-fmnist.yaml", ("train.precise_bn=50",)),
    Entry("hne-resnet-small.fmnist", "configs/hne-resnet-small-fmnist.yaml", ("train.precise_bn=50",)),
    Entry("ienet-resnet10t.fmnist", "configs/ienet-mobilenetv2-fmnist.yaml",
          ("model.name=ienet-resnet10t", *_CPU_SCALE_RESNET10T, "train.precise_bn=50")),
    Entry("deep-ensemble-resnet10t.fmnist", "configs/nfe-deep-ensemble-resnet10t-fmnist.yaml", ("train.epochs=30",)),
    Entry("nfe-resnet10t.fmnist", "configs/nfe-resnet10t-fmnist.yaml",
          ("train.epochs=30", "model.args.pruning=synflow")),
    Entry("supernet-mlp.fmnist", "configs/supernet-mlp-fmnist.yaml", ("combiner.args.l2=1.0e-2",)),
    Entry("supernet-resnet10t.fmnist", "configs/supernet-resnet10t-fmnist.yaml",
          sources=_SUPERNET_MEMBERS, sources_key="callbacks.0.args.sources"),
    Entry("meal-resnet10t.fmnist", "configs/meal-fmnist.yaml",
          ("model.name=deep-ensemble-resnet10t", *_CPU_SCALE_RESNET10T, "train.precise_bn=50"), sources=_TEACHERS,
          sources_key="distiller.args.teachers"),
)


def stages(entries: list[Entry]) -> list[list[Entry]]:
    """The entries in order of need: an entry trains in a later stage than every source of it being retrained."""
    names = {e.name for e in entries}
    done: set[str] = set()
    result = []
    while len(done) < len(entries):
        ready = [e for e in entries if e.name not in done and all(t in done or t not in names for t in e.sources)]
        if not ready:
            raise ValueError(f"entries that read each other: {sorted(names - done)}")
        result.append(ready)
        done.update(e.name for e in ready)
    return result


def blocked_rows(stage: list[Entry], rows: list[dict]) -> list[dict]:
    """Failure rows for the entries of ``stage`` that read an entry that failed earlier in this invocation: they are
    not trained from the old bundled copies, since the retrained ones were asked for."""
    failed = {r["entry"] for r in rows if "error" in r}
    return [{"entry": e.name, "error": f"not trained: its source {', '.join(sorted(failed & set(e.sources)))} failed",
             "minutes": 0.0} for e in stage if failed & set(e.sources)]


def smoke_overrides(config: Path) -> list[str]:
    """A few steps of every phase on a data subset: the pipeline, not a result."""
    phases = len(OmegaConf.select(OmegaConf.load(config), "phases", default=[]) or [])
    return ["data.subset=256", "train.epochs=1", "train.precise_bn=0",
            *(f"phases.{i}.epochs=1" for i in range(phases))]


def retrain(entry: Entry, args: argparse.Namespace, threads: int) -> dict:
    """Train one entry (resuming a half-finished run), export it into ``args.zoo_dir``; a summary row."""
    run, log = args.runs / entry.name, args.runs / f"{entry.name}.log"
    config = ROOT / entry.config
    overrides = [*entry.overrides, f"train.device={args.device}", f"train.precision={args.precision}"]
    if entry.sources:
        refs = [f"'local-dir:{(args.zoo_dir / t).resolve()}'" if (args.zoo_dir / t / "manifest.json").exists()
                else f"'{t}'" for t in entry.sources]
        overrides.append(f"{entry.sources_key}=[{','.join(refs)}]")
    if args.smoke:
        overrides += smoke_overrides(config)
    resume = ["--resume"] if (run / "checkpoints").is_dir() and not (run / "model.safetensors").exists() else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with log.open("w") as out:
        trained = (run / "model.safetensors").exists() or not subprocess.run(
            [sys.executable, "-m", "selfens_core.cli", "train", str(config), "--out", str(run), "--quiet", *resume,
             *overrides], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        minutes = (time.perf_counter() - started) / 60
        reads = f", reading {', '.join(entry.sources)}" if entry.sources else ""
        notes = (f"Retrained by `scripts/zoo_retrain.py` on {args.device_name} in {minutes:.1f} min "
                 f"({args.precision}): `{entry.config}` with `{' '.join(entry.overrides) or 'no overrides'}`{reads}.")
        exported = trained and not subprocess.run(
            [sys.executable, "-m", "selfens_core.cli", "zoo", "export", str(run), "--name", entry.name, "--zoo-dir",
             str(args.zoo_dir), "--default", "--dtype", "float16", "--overwrite", "--notes", notes,
             *(["--subset", "500"] if args.smoke else [])], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT).returncode
    if not exported:
        tail = log.read_text().strip().splitlines()[-1:] or ["?"]
        return {"entry": entry.name, "error": tail[0], "minutes": round(minutes, 2)}
    summary = json.loads((args.zoo_dir / entry.name / "manifest.json").read_text())["summary"]
    return {"entry": entry.name, "acc": summary["acc"], "acc_one_member": summary["acc_one_member"],
            "members": summary["num_members"], "minutes": round(minutes, 2)}


def _targz(zoo_dir: Path, names: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name in names:
            tar.add(zoo_dir / name, arcname=name)
    return buffer.getvalue()


def pack(zoo_dir: Path, names: list[str], out: Path) -> tuple[list[Path], list[str]]:
    """The exported entries as one gzipped tar, cut into parts of at most :data:`PACK_LIMIT` bytes, at most
    :data:`PACK_FILES` of them (``zoo.tar.gz.00``, ``zoo.tar.gz.01``, ...). Entries are taken in order while they fit;
    the part paths and the names of the entries left out are returned."""
    kept, left, data = [], [], _targz(zoo_dir, [])
    for name in names:
        trial = _targz(zoo_dir, [*kept, name])
        if len(trial) <= PACK_LIMIT * PACK_FILES:
            kept, data = [*kept, name], trial
        else:
            left.append(name)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"zoo.tar.gz.{i:02d}" for i in range(-(-len(data) // PACK_LIMIT))]
    for i, path in enumerate(paths):
        path.write_bytes(data[i * PACK_LIMIT:(i + 1) * PACK_LIMIT])
    return paths, left


def unpack(folder: Path, zoo_dir: Path) -> None:
    """Put packed entries into ``zoo_dir``, each only after every file matched its manifest's sha256."""
    from selfens_core.hub import verify

    parts = sorted(folder.glob("zoo.tar.gz.*"))
    if not parts:
        raise FileNotFoundError(f"no zoo.tar.gz.* parts in {folder}")
    staging = zoo_dir / ".unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz") as tar:
        tar.extractall(staging, filter="data")
    try:
        for entry in sorted(p for p in staging.iterdir() if p.is_dir()):
            manifest = json.loads((entry / "manifest.json").read_text())
            for file, meta in manifest["files"].items():
                verify(entry / file, meta["sha256"], f"{entry.name}/{file}")
            shutil.rmtree(zoo_dir / entry.name, ignore_errors=True)
            shutil.move(str(entry), zoo_dir / entry.name)
            print(f"{entry.name}: {len(manifest['files'])} files verified, now in {zoo_dir / entry.name}")
    finally:
        shutil.rmtree(staging)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default=None, help="default: bf16 on CUDA, fp32 elsewhere")
    parser.add_argument("--only", nargs="+", choices=[e.name for e in PLAN], help="these entries (default: all)")
    parser.add_argument("--smoke", action="store_true", help="a few steps per entry on a data subset")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at once (default: a whole stage on CUDA, one on the CPU)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "zoo-retrain", help="run directories")
    parser.add_argument("--zoo-dir", type=Path, default=ROOT / "runs" / "zoo-retrain" / "zoo",
                        help="where the exported entries go (not ./zoo: bring them in with --unpack)")
    parser.add_argument("--pack", type=Path, default=None, help="pack the exported entries into this folder")
    parser.add_argument("--unpack", type=Path, default=None, metavar="FOLDER",
                        help="verify packed entries from FOLDER and put them into ./zoo; train nothing")
    args = parser.parse_args()
    if args.unpack:
        unpack(args.unpack, ROOT / "zoo")
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: no CUDA device (use --device cpu for a smoke run here)")
        args.device_name = torch.cuda.get_device_name()
    else:
        args.device_name = f"{os.cpu_count()} CPU cores"
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    args.runs.mkdir(parents=True, exist_ok=True)
    args.zoo_dir.mkdir(parents=True, exist_ok=True)
    entries = [e for e in PLAN if not args.only or e.name in args.only]
    rows = []
    started = time.perf_counter()
    for stage in stages(entries):
        jobs = args.jobs or (len(stage) if args.device == "cuda" else 1)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        print(f"stage: {', '.join(e.name for e in stage)} ({jobs} at once, {threads} threads each)", flush=True)
        blocked = blocked_rows(stage, rows)
        for row in blocked:
            rows.append(row)
            print(f"  {row['entry']:40}    0.0 min  FAILED: {row['error']}", flush=True)
        ready = [e for e in stage if e.name not in {r["entry"] for r in blocked}]
        with ThreadPoolExecutor(jobs) as pool:
            for row in pool.map(lambda e: retrain(e, args, threads), ready):
                rows.append(row)
                result = (f"FAILED: {row['error']} (log: {args.runs / (row['entry'] + '.log')})" if "error" in row
                          else f"{100 * row['acc']:.2f}% with {row['members']} members "
                               f"({100 * row['acc_one_member']:.2f}% one member)")
                print(f"  {row['entry']:40} {row['minutes']:6.1f} min  {result}", flush=True)
    print(f"all entries in {(time.perf_counter() - started) / 60:.1f} min")
    if args.pack:
        exported = [r["entry"] for r in rows if "error" not in r]
        paths, left = pack(args.zoo_dir, exported, args.pack)
        for path in paths:
            print(f"packed {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        if left:
            print(f"not packed, over the {PACK_FILES * PACK_LIMIT / 2**20:.0f} MiB the device tool brings back: "
                  f"{', '.join(left)} (in {args.zoo_dir}; bring them with another call: --only ...)")
        (args.pack / "zoo-retrain.json").write_text(json.dumps({"device": args.device_name, "rows": rows}, indent=2))
    sys.exit(1 if any("error" in r for r in rows) else 0)


if __name__ == "__main__":
    main()
