"""The package layout: the core imports in one direction, and nothing in the working directory shadows selfens."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_core_imports_in_one_direction():
    """import-linter's layers contract (pyproject.toml) sees imports inside functions too."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_folders_named_plugins_and_zoo_in_the_working_directory_shadow_nothing(tmp_path):
    for folder in ("plugins", "zoo"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("raise ImportError('the wrong package was imported')\n")
    code = ("import selfens_core, selfens_plugins.hne, selfens_zoo; "
            "print(selfens_plugins.hne.__name__, selfens_zoo.__name__, "
            "len(selfens_core.list_models(pretrained=True)), 'hne-resnet-small' in selfens_core.list_models())")
    env = {**os.environ, "SELFENS_STRICT_PLUGINS": "1", "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    names, entries = result.stdout.split()[:2], int(result.stdout.split()[2])
    assert names == ["selfens_plugins.hne", "selfens_zoo"] and entries >= 1 and result.stdout.split()[3] == "True"
