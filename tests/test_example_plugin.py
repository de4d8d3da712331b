"""The example plugin of docs/examples, built and installed offline by pip as a user installs a plugin, then used
through the `selfens` command in fresh processes (this process's registries are filled already)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "selfens-example-plugin"
SELFENS = str(Path(sys.executable).parent / "selfens")


def _run(command, **options):
    result = subprocess.run(command, capture_output=True, text=True, **options)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(source copy, environment) with the example installed by `pip install --no-index --no-build-isolation
    --no-deps` into a target folder on PYTHONPATH: the venv, which other processes share, never changes."""
    work = tmp_path_factory.mktemp("example-plugin")
    source = shutil.copytree(EXAMPLE, work / "source", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = work / "site-packages"
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-build-isolation", "--no-deps",
          "--target", str(target), str(source)])
    pythonpath = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    return source, {**os.environ, "PYTHONPATH": pythonpath, "SELFENS_STRICT_PLUGINS": "1"}


def test_selfens_plugins_lists_the_installed_example(installed):
    _, env = installed
    report = {plugin["name"]: plugin
              for plugin in json.loads(_run([SELFENS, "plugins", "--json"], env=env))["plugins"]}
    example = report["example"]
    assert (example["distribution"], example["version"], example["builtin"]) == ("selfens-example-plugin", "0.1.0",
                                                                                False)
    assert example["hooks"] == ["register_combiners", "register_models"]
    assert example["registered"] == {"models": ["example-multihead"], "combiners": ["median_probs"]}
    assert example["failures"] == []


def test_selfens_train_runs_the_example_method_with_its_recipe(installed, tmp_path):
    source, env = installed
    run = tmp_path / "run"
    _run([SELFENS, "train", str(source / "multihead-digits.yaml"), "--out", str(run), "--quiet", "train.epochs=1",
          "data.subset=128", "model.args.width=8"], env=env)
    assert set(json.loads((run / "metrics.json").read_text())["members"]) == {"1", "2", "3", "4"}
    assert json.loads((run / "config.json").read_text())["combiner"] == "median_probs"


def test_the_example_tests_pass_against_the_installed_plugin(installed):
    source, env = installed
    _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=source, env=env)
