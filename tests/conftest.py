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
