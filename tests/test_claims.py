"""benchmarks/claims.py, the runner of the claims scripts: a finished run is kept in the repository per seed and
never trained again; minutes are idle-machine estimates."""
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import claims  # noqa: E402

TINY = ("data.name=digits", "data.subset=120", "train.batch_size=32", "train.epochs=2", "model.args.num_members=2",
        "data.eval_batch_size=64")


@pytest.fixture
def tiny_claims(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ goes here
    monkeypatch.setattr(claims, "RESULTS", tmp_path / "results")
    run = claims.Run("tiny", str(ROOT / "configs/hne-resnet-small-fmnist.yaml"), TINY)
    return claims.Claims("tiny-claims", {"tiny": run})


def test_a_finished_run_is_kept_per_seed_and_not_trained_again(tiny_claims, monkeypatch):
    tiny_claims.train("tiny", seed=3)
    kept = tiny_claims.kept("tiny")
    assert [k.seed for k in kept] == [3] and len(kept[0].epochs) == 2
    assert list(kept[0].budgets) == ["1", "2"]
    assert (claims.RESULTS / "tiny-claims" / "seed3" / "tiny" / "metrics.jsonl").exists()
    monkeypatch.setattr(claims.engine, "train", lambda *a, **k: pytest.fail("trained again"))
    tiny_claims.train("tiny", seed=3)


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tiny_claims):
    out = Path("runs/tiny-claims/seed0/tiny")
    out.mkdir(parents=True)
    (out / "config.yaml").write_text("stale: true\n")  # what a run killed during its first epoch leaves
    tiny_claims.train("tiny", seed=0)
    assert [k.seed for k in tiny_claims.kept("tiny")] == [0]


def test_a_shared_run_is_trained_once_and_kept_where_it_belongs(tiny_claims, monkeypatch):
    tiny_claims.train("tiny", seed=0)
    sharing = claims.Claims("other-claims", {"tiny": claims.Run("shared", "unused.yaml", kept_in="tiny-claims")})
    monkeypatch.setattr(claims.engine, "train", lambda *a, **k: pytest.fail("a shared run was trained again"))
    sharing.train("tiny", seed=0)
    assert [k.seed for k in sharing.kept("tiny")] == [0]
    assert not (claims.RESULTS / "other-claims").exists()


def test_minutes_count_each_phase_at_its_fastest_epoch():
    epochs = [{"seconds": 600.0}, {"seconds": 400.0}, {"seconds": 60.0}, {"seconds": 30.0, "phase": "merge"},
              {"seconds": 90.0, "phase": "merge"}]
    assert claims.Kept(0, {}, epochs).minutes == pytest.approx(4.0)


def test_mean_spread():
    assert claims.mean_spread([0.9], 2, 100) == "90.00"
    assert claims.mean_spread([0.9, 0.92], 2, 100) == "91.00 ± 1.00"


def test_every_claims_run_is_a_valid_config_whose_model_builds():
    """model.args are free-form in the schema: building each model checks them against its builder."""
    from omegaconf import OmegaConf

    from selfens_core.config import load_config
    from selfens_core.factory import build_model

    for script in ("nfe_claims", "hne_claims", "ienet_claims", "meal_claims", "snapshot_claims"):
        for run in __import__(script).CLAIMS.runs.values():
            cfg = load_config(ROOT / run.config, list(run.overrides))
            args = OmegaConf.to_container(cfg.model.args)
            build_model(cfg.model.name, num_classes=10, in_chans=1, combiner=cfg.combiner.name, **args)


def test_each_run_prints_the_command_that_trains_it(tiny_claims):
    assert shlex.split(tiny_claims.command("tiny", seed=2)) == [
        "selfens", "train", f"{ROOT}/configs/hne-resnet-small-fmnist.yaml", "--out", "runs/tiny-claims/seed2/tiny",
        *TINY, "train.seed=2"]
