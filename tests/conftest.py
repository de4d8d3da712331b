import os

import pytest
import torch

os.environ.setdefault("SELFENS_STRICT_PLUGINS", "1")  # a broken built-in plugin must fail the suite
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
