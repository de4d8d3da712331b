"""The model zoo without a network: export (Hub layout, card, manifest), load from the bundled copy, integrity and
strictness, name resolution, the CLI, and push with HfApi mocked. Hub downloads are in test_zoo_hub.py."""
import json
import re
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch

import selfens_core
from selfens_core.checkpoint import CheckpointError
from selfens_core.cli import main
from selfens_core.data import load_dataset
from selfens_core.evaluation import evaluate
from selfens_core.hub import IntegrityError, sha256_file
from selfens_core.plugins import registries
from selfens_core.pretrained import CONFIG_FILE, WEIGHTS_FILE
from selfens_core.publish import export_run, push_entry
from selfens_core.registry import Registry, UnknownNameError
from selfens_core.zoo import (
    MANIFEST_FILE,
    PINNED_FILES,
    ZooEntry,
    ZooManifestError,
    ZooUnavailableError,
    is_reference,
    list_pretrained,
    resolve,
)


def test_export_writes_the_hub_layout_with_pinned_hashes(exported):
    files = sorted(p.name for p in exported.directory.iterdir())
    assert files == ["README.md", "config.json", "manifest.json", "metrics.json", "model.safetensors"]
    manifest = json.loads((exported.directory / MANIFEST_FILE).read_text())
    for name, pinned in manifest["files"].items():
        assert pinned == {"sha256": sha256_file(exported.directory / name),
                          "size": (exported.directory / name).stat().st_size}
    config = json.loads((exported.directory / "config.json").read_text())
    assert {"architecture", "build_args", "num_classes", "in_chans", "input_size", "mean", "std", "combiner",
            "class_names", "dataset"} <= set(config)
    assert config["build_args"] == {"num_members": 2} and config["weights_dtype"] == "float16"
    assert manifest["revision"] is None and manifest["default"] is True


def test_card_is_a_hub_model_card_with_the_measured_results(exported):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported.directory / "README.md")
    metrics = json.loads((exported.directory / "metrics.json").read_text())
    assert card.data.license == "apache-2.0" and card.data.datasets == ["digits"]
    assert [r.metric_value for r in card.data.eval_results] == [round(m["acc"], 4) for m in
                                                                metrics["members"].values()]
    assert "hne-resnet-small" in card.text and "## Training recipe" in card.text
    assert "A self-ensemble of 2 members" in card.text
    assert "model.predict(images, members=1)   # any budget from 1 to 2" in card.text
    assert "Training: 1 epoch," in card.text  # the run's time, from its epoch log
    assert exported.summary["epochs"] == 1 and exported.summary["training_minutes"] >= 0


def test_load_reproduces_the_card_from_the_bundled_copy(exported):
    model = selfens_core.load("tiny-hne")
    assert not model.training and model.num_members == 2
    assert model.pretrained_cfg["origin"] == {"zoo": "tiny-hne.digits", "repo_id": "selfens/tiny-hne.digits",
                                              "revision": None, "from": "bundled"}
    assert model.pretrained_cfg["class_names"][:2] == ["0", "1"]
    info, splits = load_dataset("digits", subset=240)
    card = json.loads((exported.directory / "metrics.json").read_text())
    measured = evaluate(model, splits["test"], info)
    assert {k: m["acc"] for k, m in measured["members"].items()} == {k: m["acc"] for k, m in card["members"].items()}


def test_create_pretrained_is_load_and_never_reinitialises_a_head(exported):
    loaded, created = selfens_core.load("tiny-hne.digits"), selfens_core.create("tiny-hne", pretrained=True)
    for (name, a), b in zip(loaded.state_dict().items(), created.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="num_classes=10, not 5; a pretrained head is never re-initialised"):
        selfens_core.create("tiny-hne", pretrained=True, num_classes=5)
    with pytest.raises(TypeError, match="takes no builder arguments \\(num_members\\)"):
        selfens_core.create("tiny-hne", pretrained=True, num_members=4)


def test_listing_and_unknown_names(exported):
    assert list_pretrained() == ["tiny-hne.digits"] == selfens_core.list_models(pretrained=True)
    assert resolve("tiny-hne") == resolve("tiny-hne.digits")
    with pytest.raises(UnknownNameError, match="Unknown zoo entry 'tiny-hn'. Did you mean 'tiny-hne'"):
        selfens_core.load("tiny-hn")
    with pytest.raises(UnknownNameError, match=r"Unknown zoo entry 'hf:me/x'.* A reference is NAME\[.TAG\] \(a zoo "
                                               r"entry\), hf-hub:ORG/REPO\[@REVISION\] or local-dir:PATH"):
        selfens_core.load("hf:me/x")
    for bad in ("", " ", None):
        with pytest.raises(TypeError, match="load\\(\\) takes a reference: NAME"):
            selfens_core.load(bad)


def test_several_tags_need_a_default(exported, zoo_dir):
    other = zoo_dir / "tiny-hne.other"
    shutil.copytree(exported.directory, other)
    for directory in (exported.directory, other):
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        manifest.update(default=False, tag=directory.name.split(".")[1])
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="several tags and no single default; choose one of tiny-hne.digits, "
                                         "tiny-hne.other"):
        resolve("tiny-hne")
    assert resolve("tiny-hne.other").tag == "other"


def test_a_tampered_bundled_file_is_refused_naming_both_hashes(exported):
    weights = exported.directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    pinned = exported.files["model.safetensors"]["sha256"]
    with pytest.raises(IntegrityError, match=f"bundled tiny-hne.digits/model.safetensors: sha256 "
                                             f"{sha256_file(weights)} does not match the pinned {pinned}"):
        selfens_core.load("tiny-hne")


def test_weights_that_do_not_fit_the_config_are_refused(exported, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(exported.directory, directory)
    (directory / MANIFEST_FILE).unlink()  # else the changed config.json fails its pinned sha256 first
    config = json.loads((directory / "config.json").read_text())
    config["build_args"]["num_members"] = 4
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit"):
        selfens_core.load(f"local-dir:{directory}")
    assert selfens_core.load(f"local-dir:{exported.directory}").num_members == 2


def test_an_unpublished_entry_without_files_names_its_repo(exported):
    (exported.directory / "model.safetensors").unlink()
    with pytest.raises(ZooUnavailableError, match="repo selfens/tiny-hne.digits \\(not yet published: no revision"):
        selfens_core.load("tiny-hne")


def test_cli_list_info_pull_and_eval(exported, tmp_path, capsys):
    main(["zoo", "list"])
    out = capsys.readouterr().out
    assert "tiny-hne.digits" in out and "unpublished" in out
    main(["zoo", "info", "tiny-hne"])
    assert json.loads(capsys.readouterr().out)["bundled"] is True
    main(["zoo", "pull", "tiny-hne"])
    assert "3 files verified (sha256) from bundled" in capsys.readouterr().out
    main(["eval", "tiny-hne", "--data", "digits", "--subset", "240", "--out", str(tmp_path / "ev")])
    card = json.loads((exported.directory / "metrics.json").read_text())
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["members"]["2"]["acc"] == \
        card["members"]["2"]["acc"]
    with pytest.raises(SystemExit, match="error: Unknown zoo entry 'nope'"):
        main(["zoo", "info", "nope"])


def test_push_uploads_the_files_and_pins_the_commit(exported):
    api = mock.Mock()
    api.create_commit.return_value.oid = "a" * 40
    pushed = push_entry("tiny-hne", repo_id="me/tiny", api=api)
    api.create_repo.assert_called_once_with("me/tiny", repo_type="model", private=False, exist_ok=True)
    operations = api.create_commit.call_args.kwargs["operations"]
    assert sorted(op.path_in_repo for op in operations) == ["README.md", "config.json", "model.safetensors"]
    manifest = json.loads((exported.directory / MANIFEST_FILE).read_text())
    assert (pushed.revision, manifest["revision"], manifest["repo_id"]) == ("a" * 40, "a" * 40, "me/tiny")


@pytest.mark.parametrize(("name", "tag", "problem"), [
    ("/tmp/elsewhere/b", "x", "NAME is '/tmp/elsewhere/b'"), ("a/b", "x", "NAME is 'a/b'"),
    ("", "./x", "NAME is ''"), ("a", "x.y", "TAG is 'x.y'"), ("noTag", "", "'noTag' has no tag: write NAME.TAG"),
])
def test_export_refuses_a_name_that_is_not_a_folder_name_before_writing(tiny_run, zoo_dir, name, tag, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        export_run(tiny_run, name=name, tag=tag, zoo_dir=zoo_dir, progress=False)
    assert not zoo_dir.exists()


def test_push_refuses_a_file_changed_since_export(exported):
    api = mock.Mock()
    with (exported.directory / "README.md").open("a") as card:
        card.write("edited by hand\n")
    with pytest.raises(IntegrityError, match="README.md.*does not match the pinned"):
        push_entry("tiny-hne", repo_id="me/tiny", api=api)
    api.create_repo.assert_not_called()
    api.create_commit.assert_not_called()


def test_export_never_replaces_an_entry_without_overwrite(exported, tiny_run, zoo_dir, capsys):
    entry = exported.directory
    before = {p.name: p.read_bytes() for p in entry.iterdir()}
    export = ["zoo", "export", str(tiny_run), "--name", "tiny-hne.digits", "--zoo-dir", str(zoo_dir), "--subset", "240"]
    refused = (f"error: {re.escape(str(entry))} holds README.md, config.json, manifest.json, metrics.json, "
               r"model.safetensors \(a trained model or run\); `selfens zoo export` would replace its config.json, "
               r"model.safetensors, README.md, metrics.json, manifest.json. Pass --overwrite to write anyway .* or "
               r"choose another --name or --zoo-dir$")
    with pytest.raises(SystemExit, match=refused):
        main(export)
    assert {p.name: p.read_bytes() for p in entry.iterdir()} == before
    main([*export, "--overwrite"])  # float32 this time
    assert f"--overwrite: replacing config.json, model.safetensors, README.md, metrics.json, manifest.json in {entry}" \
        in capsys.readouterr().out
    assert json.loads((entry / "config.json").read_text())["weights_dtype"] == "float32"
    assert resolve("tiny-hne").files["model.safetensors"]["sha256"] == sha256_file(entry / "model.safetensors")


# --- Hardening (issue 10): broken manifests are isolated, zoo names win over folders, local folders are verified ---

def _zoo_with_builtin_and(tmp_path, monkeypatch):
    """The registered zoo sources replaced by the built-in zoo (as built in) and a third-party source in tmp_path."""
    builtin = registries().zoo_sources.get("selfens-zoo")
    sources = Registry("zoo source")
    sources.add("selfens-zoo", builtin, plugin="zoo", builtin=True)
    sources.add("acme-zoo", tmp_path, plugin="acme")
    monkeypatch.setattr(registries(), "zoo_sources", sources)
    return sorted(p.parent.name for p in Path(builtin).glob(f"*/{MANIFEST_FILE}"))


def _manifest(directory, text):
    directory.mkdir(parents=True)
    (directory / MANIFEST_FILE).write_text(text)
    return directory / MANIFEST_FILE


def test_one_broken_manifest_skips_only_its_entry(tmp_path, monkeypatch):
    builtins = _zoo_with_builtin_and(tmp_path, monkeypatch)
    first = Path(registries().zoo_sources.get("selfens-zoo")) / builtins[0]
    good = json.loads((first / MANIFEST_FILE).read_text())
    _manifest(tmp_path / "acme-good.x", json.dumps({**good, "name": "acme-good", "tag": "x"}))
    bad_json = _manifest(tmp_path / "acme-json.x", "{not json")
    no_key = _manifest(tmp_path / "acme-nokey.x", json.dumps({k: v for k, v in good.items() if k != "repo_id"}))
    twice = _manifest(tmp_path / builtins[0], json.dumps(good))  # a third-party entry named like a built-in one
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    with pytest.warns(UserWarning) as caught:
        names = list_pretrained()
    assert names == sorted([*builtins, "acme-good.x"])
    assert [str(w.message) for w in caught] == [
        f"zoo source 'acme-zoo': zoo manifest {bad_json} is invalid: JSONDecodeError: Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1); the entry is skipped (set SELFENS_STRICT_PLUGINS=1 to "
        "make this an error)",
        f"zoo source 'acme-zoo': zoo manifest {no_key} is invalid: the key 'repo_id' is missing; the entry is skipped "
        "(set SELFENS_STRICT_PLUGINS=1 to make this an error)",
        f"zoo entry {builtins[0]!r} is defined twice: by selfens-zoo ({first}) and by "
        f"acme-zoo ({twice.parent}); the first is kept; the entry is skipped (set SELFENS_STRICT_PLUGINS=1 to make "
        "this an error)"]
    with pytest.warns(UserWarning) as caught:
        assert resolve(builtins[0]).directory == first  # the built-in entry keeps its name
    assert len(caught) == 3 and "defined twice" in str(caught[2].message)
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "1")  # strict (the suite, CI): the broken manifest is an error
    with pytest.raises(ZooManifestError, match=rf"zoo manifest {bad_json} is invalid: JSONDecodeError.*\("
                                               r"SELFENS_STRICT_PLUGINS is set: unset it to skip the entry with a "
                                               r"warning\)"):
        list_pretrained()


def test_a_manifest_must_pin_what_load_pretrained_reads():
    assert PINNED_FILES == (CONFIG_FILE, WEIGHTS_FILE)


@pytest.mark.parametrize(("manifest", "problem"), [
    ([], "it holds a JSON list, not an object"),
    ({"format": "selfens-zoo/0"}, "format is 'selfens-zoo/0', expected 'selfens-zoo/1'"),
    ({"format": "selfens-zoo/1", "name": "a", "tag": "b", "repo_id": "r", "files": []},
     "'files' is a list, expected a dict"),
    ({"format": "selfens-zoo/1", "name": "a", "tag": "b", "repo_id": "r", "files": {"../x": {"sha256": "0" * 64}}},
     "file '../x' is not a plain path inside the entry"),
    ({"format": "selfens-zoo/1", "name": "a", "tag": "b", "repo_id": "r", "files": {"x": {"size": 1}}},
     "file 'x' has no sha256 \\(64 hex digits\\)"),
    ({"format": "selfens-zoo/1", "name": "a", "tag": "b", "repo_id": "r", "files": {}},
     "it does not pin config.json and model.safetensors: nothing would check what is loaded"),
    ({"format": "selfens-zoo/1", "name": "a", "tag": "b", "repo_id": "r", "files": {"README.md": {"sha256": "0" * 64}}},
     "it does not pin config.json and model.safetensors"),
])
def test_a_bad_manifest_is_named_with_its_problem(tmp_path, manifest, problem):
    path = _manifest(tmp_path / "a.b", json.dumps(manifest))
    with pytest.raises(ZooManifestError, match=rf"zoo manifest {path} is invalid: {problem}"):
        ZooEntry.read(path, "test")


def test_an_unknown_zoo_name_says_what_was_skipped_or_disabled(tmp_path, monkeypatch):
    _zoo_with_builtin_and(tmp_path, monkeypatch)
    bad = _manifest(tmp_path / "acme-bad.x", "{")
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    with pytest.warns(UserWarning, match="acme-bad.x"), \
            pytest.raises(UnknownNameError, match=rf"Unknown zoo entry 'acme-bad'\. .* Not loaded, and may provide "
                                                  rf"it: skipped: zoo manifest {bad} is invalid: JSONDecodeError"):
        selfens_core.load("acme-bad")
    monkeypatch.undo()  # the real zoo sources again
    monkeypatch.setenv("SELFENS_DISABLE_PLUGINS", "zoo")
    registries.cache_clear()
    try:
        with pytest.raises(UnknownNameError, match=r"Unknown zoo entry 'resnet10t'\. Known: \(none\)\. Not loaded, and "
                                                   r"may provide it: plugin 'zoo' is disabled by "
                                                   r"SELFENS_DISABLE_PLUGINS\."):
            selfens_core.load("resnet10t")
    finally:
        registries.cache_clear()


BUILTIN = "resnet10t.fmnist"  # a bundled built-in entry (1 member, 1-channel 28x28 images, 10 classes)


def test_a_folder_named_like_a_zoo_entry_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / BUILTIN).mkdir()  # any folder: used, it would fail (no config.json)
    with pytest.warns(UserWarning, match=rf"'{BUILTIN}' is a zoo entry and also a folder in the working directory; "
                                         rf"using the zoo entry \(for the folder, use local-dir:{BUILTIN} or "
                                         rf"./{BUILTIN}\)"), \
            pytest.raises(SystemExit, match="error: the model takes 1-channel images of 10 classes"):  # it loaded
        main(["eval", BUILTIN, "--data", "fake:3:32:32:10", "--out", "ev"])
    assert not is_reference(f"./{BUILTIN}") and is_reference(f"local-dir:{BUILTIN}")
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    with pytest.raises(UnknownNameError, match="A folder runs/mine exists: load it with local-dir:runs/mine"):
        selfens_core.load("runs/mine")


def test_a_local_folder_with_a_manifest_is_verified_before_loading(tmp_path):
    directory = shutil.copytree(resolve(BUILTIN).directory, tmp_path / "copy")
    weights = directory / "model.safetensors"
    pinned = sha256_file(weights)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # a changed weight: it would load without complaint
    weights.write_bytes(bytes(data))
    message = (rf"{weights} \(pinned by {directory / MANIFEST_FILE}\): sha256 {sha256_file(weights)} does not match "
               rf"the pinned {pinned}")
    with pytest.raises(IntegrityError, match=message):
        selfens_core.load(f"local-dir:{directory}")
    with pytest.raises(SystemExit, match="error: " + message):
        main(["eval", str(directory), "--data", "fake:1:28:28:10", "--out", str(tmp_path / "ev")])
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (directory / "README.md").unlink()
    with pytest.raises(IntegrityError, match=rf"{directory / 'README.md'} is pinned by {directory / MANIFEST_FILE} "
                                             "but missing"):
        selfens_core.load(f"local-dir:{directory}")
    (directory / MANIFEST_FILE).unlink()  # a folder without a manifest (a run directory) has nothing to check
    assert selfens_core.load(f"local-dir:{directory}").num_members == 1


def test_a_card_shows_the_cost_a_model_reports_and_the_training_time(tmp_path):
    from selfens_core.publish import write_card

    cfg = {"dataset": "digits", "architecture": "nfe-resnet10t", "num_classes": 10, "in_chans": 1,
           "input_size": [1, 8, 8]}
    budget = {"acc": 0.9, "nll": 0.3, "ece": 0.01, "brier": 0.1, "flops": 4e6, "effective_flops": 2e6}
    metrics = {"members": {"1": budget}, "member_acc": [0.9], "disagreement": 0.0, "params": 2000,
               "effective_params": 1000, "num_samples": 100}
    epochs = [{"epoch": 1, "seconds": 120.0}, {"epoch": 2, "seconds": 60.0}]
    text = write_card(tmp_path, cfg, metrics, name="x.digits", recipe="", license="mit", epochs=epochs).read_text()
    assert "| 1 | 90.00 | 0.300 | 0.010 | 0.100 | 4.0 | 2.0 |" in text
    assert "Parameters: 2,000 (1,000 nonzero)" in text
    assert "Training: 2 epochs, 3.0 minutes as logged, 2.0 at each phase's fastest epoch" in text
    assert "A single network (a self-ensemble of one member)" in text and "probs = model.predict(images)\n" in text
