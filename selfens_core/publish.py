"""Turn a training run into a zoo entry (Hub layout, model card, manifest with sha256) and publish it to the Hub.

``export_run`` writes ``<zoo>/<name>.<tag>/``: ``config.json``, ``model.safetensors`` (optionally stored in float16),
``README.md`` (a huggingface_hub ``ModelCard`` whose numbers are measured on the exported weights, so what a user
loads is what the card reports), ``metrics.json`` and ``manifest.json``; an existing entry (or run) there is replaced
only with ``overwrite``. ``push_entry`` uploads the files and pins the new commit.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .hub import sha256_file
from .pretrained import CONFIG_FILE, WEIGHTS_FILE, load_pretrained, save_pretrained
from .rundir import METRICS_FILE, check_output_target, idle_epoch_seconds, read_epoch_log
from .zoo import MANIFEST_FILE, ZooEntry, resolve, verify_local

CARD_FILE = "README.md"
HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
EXPORTED_FILES = (*HUB_FILES, METRICS_FILE, MANIFEST_FILE)
ENTRY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # NAME or TAG of a zoo entry: a folder name, a Hub repo name
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export_run(run_dir: str | Path, *, name: str, tag: str, zoo_dir: str | Path, repo_id: str | None = None,
               default: bool = False, dtype: str = "float32", eval_subset: int | None = None,
               data_root: str | None = None, license: str = "apache-2.0", notes: str = "",
               progress: bool = True, overwrite: bool = False) -> ZooEntry:
    """Write the zoo entry ``name.tag`` from the final weights of ``run_dir`` and evaluate what was written on the
    test split of the run's dataset; returns the entry (its manifest is written too).

    A folder ``zoo_dir/name.tag`` that already holds an entry, a run or one of the files written is refused before
    anything is written (its manifest may pin a published revision), unless ``overwrite``."""
    from .data import load_dataset
    from .evaluation import evaluate

    if not tag:
        raise ValueError(f"a zoo entry is NAME.TAG and {name!r} has no tag: write NAME.TAG or pass --tag")
    for part, value in (("NAME", name), ("TAG", tag)):
        if not ENTRY_PART.fullmatch(value):
            raise ValueError(f"a zoo entry is NAME.TAG, each of letters, digits, '-' and '_' (not a path, no dot "
                             f"inside): {part} is {value!r}")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    run_dir, out = Path(run_dir), Path(zoo_dir) / f"{name}.{tag}"
    check_output_target(out, EXPORTED_FILES, command="`selfens zoo export`", overwrite=overwrite,
                        elsewhere="choose another --name or --zoo-dir")
    model = load_pretrained(run_dir)
    model.pretrained_cfg["weights_dtype"] = dtype
    save_pretrained(copy.deepcopy(model).to(STORAGE_DTYPES[dtype]), out)
    exported = load_pretrained(out)  # exactly what users will load
    dataset = exported.pretrained_cfg.get("dataset")
    if not dataset:
        raise ValueError(f"{run_dir / CONFIG_FILE} names no dataset; export runs made by `selfens train`")
    info, splits = load_dataset(dataset, root=data_root, subset=eval_subset)
    metrics = evaluate(exported, splits["test"], info, progress=progress)
    metrics.update(split="test", dataset=dataset)
    recipe = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    epochs = read_epoch_log(run_dir)
    write_card(out, exported.pretrained_cfg, metrics, name=f"{name}.{tag}", recipe=recipe, license=license,
               notes=notes, epochs=epochs)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    best = metrics["members"][str(max(map(int, metrics["members"])))]
    entry = ZooEntry(name=name, tag=tag, repo_id=repo_id or f"selfens/{name}.{tag}", revision=None,
                     files={f: {"sha256": sha256_file(out / f), "size": (out / f).stat().st_size} for f in HUB_FILES},
                     directory=out, source="export", default=default,
                     summary={"architecture": exported.pretrained_cfg["architecture"], "dataset": dataset,
                              "num_members": exported.num_members, "acc": best["acc"],
                              "acc_one_member": metrics["members"]["1"]["acc"], "test_images": len(splits["test"]),
                              "params": metrics["params"], "weights_dtype": dtype, "epochs": len(epochs),
                              "training_minutes": round(sum(idle_epoch_seconds(epochs)) / 60, 1)})
    write_manifest(entry)
    return entry


def write_manifest(entry: ZooEntry) -> Path:
    path = entry.directory / MANIFEST_FILE
    path.write_text(json.dumps(entry.to_manifest(), indent=2) + "\n")
    return path


def write_card(directory: Path, cfg: dict[str, Any], metrics: dict[str, Any], *, name: str, recipe: str,
               license: str, notes: str = "", epochs: Sequence[dict[str, Any]] = ()) -> Path:
    """A Hub model card: metadata (license, dataset, accuracy per budget as model-index results) and a body with the
    per-budget table, the training time (from the run's ``epochs`` records, when given), the training recipe and how
    to load the model."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset = cfg["dataset"]
    results = [EvalResult(task_type="image-classification", dataset_type=dataset, dataset_name=dataset,
                          dataset_split="test", metric_type="accuracy", metric_name=f"accuracy, {k} member(s)",
                          metric_value=round(m["acc"], 4))
               for k, m in metrics["members"].items()]
    data = ModelCardData(license=license, library_name="selfens", datasets=[dataset], model_name=name,
                         tags=["self-ensemble", "image-classification", cfg["architecture"]], eval_results=results,
                         pipeline_tag="image-classification")
    effective = all("effective_flops" in m for m in metrics["members"].values()) and bool(metrics["members"])
    rows = "\n".join(f"| {k} | {100 * m['acc']:.2f} | {m['nll']:.3f} | {m['ece']:.3f} | {m['brier']:.3f} | "
                     f"{m.get('flops', 0) / 1e6:.1f} |" + (f" {m['effective_flops'] / 1e6:.1f} |" if effective else "")
                     for k, m in metrics["members"].items())
    training = "" if not epochs else (
        f"\nTraining: {len(epochs)} epoch{'s' if len(epochs) > 1 else ''}, "
        f"{sum(r['seconds'] for r in epochs) / 60:.1f} minutes as logged, {sum(idle_epoch_seconds(epochs)) / 60:.1f} "
        f"at each phase's fastest epoch (an estimate of the idle machine's cost; evaluation excluded).\n")
    n = len(metrics["member_acc"])
    what = f"A self-ensemble of {n} members" if n > 1 else "A single network (a self-ensemble of one member)"
    predict = (f"model.predict(images, members={n // 2})   # any budget from 1 to {n}" if n > 1
               else "model.predict(images)")
    params = f"{metrics['params']:,}" + (f" ({metrics['effective_params']:,} nonzero)"
                                         if "effective_params" in metrics else "")
    body = f"""
# {name}

{what}, architecture `{cfg['architecture']}`
(build arguments `{json.dumps(cfg.get('build_args', {}))}`), trained with [selfens](https://github.com/selfens/selfens)
on {dataset} ({cfg['num_classes']} classes, {cfg['in_chans']}-channel {cfg['input_size'][1]}x{cfg['input_size'][2]}
images). Weights are stored in {cfg.get('weights_dtype', 'float32')}.

```python
import selfens_core
model = selfens_core.load("{name}")
probs = {predict}
```

## Test-set results per member budget

Measured by `selfens eval` on the exported weights, {metrics['num_samples']} test images.

| members | accuracy (%) | NLL | ECE | Brier | MFLOPs/image |{" effective MFLOPs/image |" if effective else ""}
|---|---|---|---|---|---|{"---|" if effective else ""}
{rows}

Member accuracies: {', '.join(f'{100 * a:.2f}' for a in metrics['member_acc'])}.
Disagreement: {metrics['disagreement']:.4f}. Parameters: {params}.
{training}
{notes}

## Training recipe

```yaml
{recipe.strip()}
```
"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = directory / CARD_FILE
    card.save(path)
    return path


def push_entry(ref: str, *, repo_id: str | None = None, token: str | None = None, private: bool = False,
               api: Any = None) -> ZooEntry:
    """Upload a bundled entry's files to ``repo_id`` (default: its manifest's) and pin the new commit in its manifest.

    Every file is checked against the manifest's sha256 first: a file changed since its export is refused, not
    published under a hash that every download would then reject. The token is the usual one (``HF_TOKEN`` or
    ``hf auth login``) unless ``token`` is given.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    entry = resolve(ref)
    if not entry.bundled:
        raise FileNotFoundError(f"zoo entry {entry.full_name} has no bundled files in {entry.directory} to push")
    verify_local(entry.directory)
    repo_id = repo_id or entry.repo_id
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.create_commit(repo_id, operations=[CommitOperationAdd(f, str(entry.directory / f))
                                                    for f in entry.files],
                               commit_message=f"selfens: {entry.full_name}")
    pushed = dataclasses.replace(entry, repo_id=repo_id, revision=commit.oid)
    write_manifest(pushed)
    return pushed
