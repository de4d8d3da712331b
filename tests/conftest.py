import os

import pytest
import torch

pytest_plugins = [
    "hub_server",  # the local Hugging Face Hub fixtures: hub_server, hub_env, dead_endpoint
    "selfens_core.testing",  # the plugin-author fixtures: isolated_registries, register_plugin
    "zoo_fixtures",  # tiny_run, zoo_dir (a temporary zoo source), exported (tiny_run as zoo entry tiny-hne.digits)
]
os.environ.setdefault("SELFENS_STRICT_PLUGINS", "1")  # a broken built-in plugin must fail the suite
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def kill_after_checkpoints(monkeypatch):
    """``kill_after_checkpoints(*names)``: from then on, training raises KeyboardInterrupt (a kill) once, right after
    it wrote each checkpoint named (``epoch-0001-step-000002``)."""
    from selfens_core import engine
    from selfens_core.checkpoint import latest_checkpoint

    save = engine._save

    def kill_after(*names: str) -> None:
        kills = set(names)

        def save_then_kill(out, *args):
            save(out, *args)
            newest = latest_checkpoint(out).name
            if newest in kills:
                kills.remove(newest)
                raise KeyboardInterrupt

        monkeypatch.setattr(engine, "_save", save_then_kill)

    return kill_after
