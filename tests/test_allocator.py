"""selfens keeps freed activation memory in the process (allocator.py), unless SELFENS_MALLOC=system."""
import os
import subprocess
import sys

import pytest

CODE = """
import torch, selfens_core
from selfens_core.allocator import keep_freed_memory
selfens_core.create("hne-resnet-small", num_classes=10, in_chans=1)  # the first model applies the setting
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
before = rss()
x = torch.ones(64 * 2**20 // 4)  # 64 MB: above glibc's default mmap threshold
del x
print(keep_freed_memory(), (rss() - before) // 2**20)
"""


def _run(**env: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", CODE], env={**os.environ, **env}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux") or "LD_PRELOAD" in os.environ, reason="glibc only")
def test_freed_memory_stays_in_the_process_unless_asked_otherwise():
    kept, kept_mb = _run(SELFENS_MALLOC="keep")
    system, system_mb = _run(SELFENS_MALLOC="system")
    assert (kept, system) == ("kept", "system")
    assert int(kept_mb) >= 48 and int(system_mb) < 8  # kept in the heap (most of the 64 MB) vs returned at once


def test_an_unknown_setting_names_the_variable(monkeypatch):
    from selfens_core import allocator

    monkeypatch.setenv("SELFENS_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match="SELFENS_MALLOC='jemalloc': use 'keep'"):
        allocator._apply()
