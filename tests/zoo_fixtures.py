"""Zoo fixtures shared by test_zoo.py and test_zoo_hub.py: a tiny trained run, a temporary zoo source, and that run
exported into it."""
from pathlib import Path

import pytest

from selfens_core.cli import main
from selfens_core.plugins import registries
from selfens_core.publish import export_run
from selfens_core.registry import Registry

TINY = ["data.name=digits", "data.subset=240", "train.batch_size=32", "train.epochs=1", "model.args.num_members=2",
        "data.eval_batch_size=64"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("zoo") / "run"
    main(["train", "configs/hne-resnet-small-fmnist.yaml", "--out", str(run), "--quiet", *TINY])
    return run


@pytest.fixture
def zoo_dir(tmp_path, monkeypatch) -> Path:
    """A temporary zoo source replacing the registered ones for one test."""
    sources = Registry("zoo source")
    sources.add("test-zoo", tmp_path / "zoo", plugin="tests")
    monkeypatch.setattr(registries(), "zoo_sources", sources)
    return tmp_path / "zoo"


@pytest.fixture
def exported(tiny_run, zoo_dir):
    return export_run(tiny_run, name="tiny-hne", tag="digits", zoo_dir=zoo_dir, default=True, dtype="float16",
                      eval_subset=240, progress=False)
