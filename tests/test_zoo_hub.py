"""The zoo against a real Hub-compatible server (olah on 127.0.0.1, see hub_server.py): download at the pinned
revision, sha256 checks on cached files, offline mode served from the cache, an unreachable Hub."""
import json

import pytest
import torch
from hub_server import set_endpoint, set_offline

import selfens_core
from selfens_core.hub import IntegrityError
from selfens_core.pretrained import save_pretrained
from selfens_core.zoo import MANIFEST_FILE, ZooUnavailableError


def publish(hub_server, entry, repo_id: str, *, bundled: bool = False, **manifest_changes) -> str:
    """Serve ``entry``'s files from a new Hub repo and pin its commit in the manifest; unless ``bundled``, the entry
    keeps only its manifest (a published entry too big for git). Returns the commit."""
    revision = hub_server.create_repo(repo_id, {f: entry.directory / f for f in entry.files})
    manifest = {**entry.to_manifest(), "repo_id": repo_id, "revision": revision, **manifest_changes}
    (entry.directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    if not bundled:
        for f in entry.files:
            (entry.directory / f).unlink()
    return revision


def test_downloads_the_pinned_revision_into_the_cache(exported, hub_env):
    expected = selfens_core.load("tiny-hne").state_dict()
    revision = publish(hub_env.server, exported, "zoo/pinned")
    changed = selfens_core.load(f"hf-hub:zoo/pinned@{revision}")
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    newer = exported.directory.parent / "newer"
    save_pretrained(changed, newer)
    assert hub_env.server.commit("zoo/pinned", {"model.safetensors": newer / "model.safetensors"}) != revision

    model = selfens_core.load("tiny-hne")
    assert model.pretrained_cfg["origin"] == {"zoo": "tiny-hne.digits", "repo_id": "zoo/pinned",
                                              "revision": revision, "from": "hub"}
    for (name, a), b in zip(model.state_dict().items(), expected.values()):
        assert torch.equal(a, b), name
    assert (hub_env.cache_dir / "models--zoo--pinned" / "snapshots" / revision / "model.safetensors").is_file()
    latest = selfens_core.load("hf-hub:zoo/pinned")  # main: the newer commit
    assert not torch.equal(next(latest.parameters()), next(model.parameters()))


def test_a_file_that_fails_its_hash_is_refused_and_removed_from_the_cache(exported, hub_env):
    pinned = exported.files["model.safetensors"]["sha256"]
    wrong = {**exported.files, "model.safetensors": {**exported.files["model.safetensors"], "sha256": "0" * 64}}
    revision = publish(hub_env.server, exported, "zoo/tampered", files=wrong)
    cached = hub_env.cache_dir / "models--zoo--tampered" / "snapshots" / revision / "model.safetensors"
    with pytest.raises(IntegrityError, match=f"zoo/tampered@{revision}/model.safetensors: sha256 {pinned} does "
                                             f"not match the pinned {'0' * 64}; the file was removed from the cache"):
        selfens_core.load("tiny-hne")
    assert not cached.exists() and not list((hub_env.cache_dir / "models--zoo--tampered" / "blobs").glob(pinned))


def test_offline_is_served_from_the_cache_and_names_the_cache_when_it_cannot(exported, hub_env, monkeypatch,
                                                                           dead_endpoint):
    publish(hub_env.server, exported, "zoo/offline")
    set_offline(monkeypatch, True)
    with pytest.raises(ZooUnavailableError, match="HF_HUB_OFFLINE is set.*no bundled copy"):
        selfens_core.load("tiny-hne")
    set_offline(monkeypatch, False)
    selfens_core.load("tiny-hne")  # fills the cache
    set_offline(monkeypatch, True)
    set_endpoint(monkeypatch, dead_endpoint)
    assert selfens_core.load("tiny-hne").pretrained_cfg["origin"]["from"] == "hub"


def test_an_unreachable_hub_falls_back_to_the_bundled_copy_else_names_repo_revision_and_cache(
        exported, hub_env, monkeypatch, dead_endpoint):
    revision = publish(hub_env.server, exported, "zoo/down", bundled=True)
    set_endpoint(monkeypatch, dead_endpoint)
    with pytest.warns(UserWarning, match="the Hub gave no copy .*using the bundled copy"):
        assert selfens_core.load("tiny-hne").pretrained_cfg["origin"]["from"] == "bundled"
    for f in exported.files:
        (exported.directory / f).unlink()
    cache = hub_env.cache_dir / "models--zoo--down"
    with pytest.raises(ZooUnavailableError, match=f"repo zoo/down at revision {revision}, cache {cache}"):
        selfens_core.load("tiny-hne")


def test_pull_through_the_cli_then_offline_eval(exported, hub_env, monkeypatch, tmp_path, capsys):
    from selfens_core.cli import main

    publish(hub_env.server, exported, "zoo/cli")
    main(["zoo", "pull", "tiny-hne"])
    assert "3 files verified (sha256) from hub" in capsys.readouterr().out
    set_offline(monkeypatch, True)
    main(["eval", "tiny-hne.digits", "--data", "digits", "--subset", "240", "--out", str(tmp_path / "ev")])
    manifest = json.loads((exported.directory / MANIFEST_FILE).read_text())
    measured = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert measured["members"]["2"]["acc"] == manifest["summary"]["acc"]
