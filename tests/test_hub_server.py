"""The local Hub of tests/hub_server.py works with the real huggingface_hub client, and fails the way we expect.

Exceptions observed (olah 0.5.4, huggingface_hub 2.4.0), all in ``huggingface_hub.errors``:

- missing file, revision = commit sha: ``RemoteEntryNotFoundError`` (an ``HfHubHTTPError`` and ``EntryNotFoundError``);
  revision = branch: ``RepositoryNotFoundError`` (olah's quirk, the real Hub says ``RemoteEntryNotFoundError``);
- unknown revision: a 40-hex sha gives ``LocalEntryNotFoundError`` (cause: ``HfHubHTTPError``, olah's 500), a branch
  name ``RepositoryNotFoundError``;
- unreachable Hub (connection refused): ``LocalEntryNotFoundError`` (cause: ``httpx2.ConnectError``) for a file not in
  the cache; a file cached at a pinned commit sha is returned without any request;
- offline mode, file not cached: ``LocalEntryNotFoundError`` (cause: ``OfflineModeIsEnabled``); ``HfApi`` calls raise
  ``OfflineModeIsEnabled`` (a ``ConnectionError``) directly.

Offline, or with the Hub unreachable, ``snapshot_download`` at a commit sha returns the cached snapshot folder even if
only some of its files were ever downloaded (no error); at a branch, it needs ``refs/<branch>`` in the cache, which only
a download *by that branch name* writes.

``LocalEntryNotFoundError`` is a ``FileNotFoundError`` and an ``EntryNotFoundError``; ``HfHubHTTPError`` is an
``OSError`` and an ``httpx2.HTTPError``; ``OfflineModeIsEnabled`` is a ``ConnectionError``. A transport error that
huggingface_hub does not translate (e.g. ``httpx2.ReadError``: its first HEAD only translates ``ConnectError`` and
timeouts) is an ``httpx2.HTTPError`` but no ``OSError``. So "the Hub can't give me this file" is
``(OSError, httpx2.HTTPError)``: huggingface_hub 2.x uses ``httpx2``, and ``httpx2`` errors are not ``httpx`` errors.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from hub_server import HubEnv, HubServer, set_endpoint, set_offline
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)

REPO = "selfens-tests/tiny"
CONFIG_V1 = b'{"model": "tiny", "version": 1, "note": "' + b"x" * 200 + b'"}\n'
CONFIG_V2 = b'{"model": "tiny", "version": 2, "note": "' + b"y" * 200 + b'"}\n'
WEIGHTS = os.urandom(300_000)
README = b"# tiny\n\nA repository of the selfens test suite, large enough to stay out of olah's LFS-sniffing window.\n"
UNKNOWN_SHA = "0123456789abcdef0123456789abcdef01234567"
FAILURE_GUARD_S = 10.0  # a guard against the ~23 s of default retries, not a benchmark


@pytest.fixture(scope="module")
def shas(hub_server: HubServer) -> tuple[str, str]:
    """Two commits of `REPO`: the first with config v1 and the weights, the second with config v2 and a README."""
    first = hub_server.create_repo(REPO, {"config.json": CONFIG_V1, "weights.bin": WEIGHTS})
    second = hub_server.commit(REPO, {"config.json": CONFIG_V2, "docs/README.md": README})
    return first, second


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def test_commits_are_full_shas(shas: tuple[str, str]) -> None:
    for sha in shas:
        assert len(sha) == 40 and int(sha, 16) >= 0
    assert shas[0] != shas[1]


def test_hf_hub_download_at_a_commit(hub_env: HubEnv, shas: tuple[str, str]) -> None:
    first, _ = shas
    weights = hf_hub_download(REPO, "weights.bin", revision=first)
    assert _read(weights) == WEIGHTS
    assert Path(weights).is_relative_to(hub_env.cache_dir)
    assert _read(hf_hub_download(REPO, "config.json", revision=first)) == CONFIG_V1


def test_snapshot_download_at_a_commit(hub_env: HubEnv, shas: tuple[str, str]) -> None:
    first, second = shas
    old = Path(snapshot_download(REPO, revision=first))
    files = sorted(p.relative_to(old).as_posix() for p in old.rglob("*") if p.is_file())
    assert files == ["config.json", "weights.bin"]
    assert _read(old / "config.json") == CONFIG_V1 and _read(old / "weights.bin") == WEIGHTS
    new = Path(snapshot_download(REPO, revision=second))
    assert _read(new / "config.json") == CONFIG_V2 and _read(new / "docs" / "README.md") == README


def test_a_new_commit_leaves_old_revisions_alone(hub_env: HubEnv, shas: tuple[str, str]) -> None:
    first, second = shas
    assert _read(hf_hub_download(REPO, "config.json", revision=first)) == CONFIG_V1
    assert _read(hf_hub_download(REPO, "config.json", revision=second)) == CONFIG_V2
    assert _read(hf_hub_download(REPO, "config.json")) == CONFIG_V2  # main follows the new commit
    assert HfApi().model_info(REPO, revision="main").sha == second


def test_offline_mode_serves_the_cache(hub_env: HubEnv, shas: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = shas
    online = hf_hub_download(REPO, "config.json", revision=first)
    set_offline(monkeypatch, True)
    assert hf_hub_download(REPO, "config.json", revision=first) == online
    with pytest.raises(LocalEntryNotFoundError) as not_cached:
        hf_hub_download(REPO, "weights.bin", revision=first)
    assert isinstance(not_cached.value.__cause__, OfflineModeIsEnabled)
    with pytest.raises(OfflineModeIsEnabled):
        HfApi().model_info(REPO, revision=first)
    partial = Path(snapshot_download(REPO, revision=first))  # no error, although weights.bin was never downloaded
    assert sorted(p.name for p in partial.iterdir()) == ["config.json"]
    set_offline(monkeypatch, False)
    assert _read(hf_hub_download(REPO, "weights.bin", revision=first)) == WEIGHTS


def test_missing_file(hub_env: HubEnv, shas: tuple[str, str]) -> None:
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "absent.json", revision=shas[0])
    with pytest.raises(RepositoryNotFoundError):  # olah's answer at a branch; the real Hub: RemoteEntryNotFoundError
        hf_hub_download(REPO, "absent.json", revision="main")


def test_unknown_revision_fails_fast(hub_env: HubEnv, shas: tuple[str, str]) -> None:
    start = time.monotonic()
    with pytest.raises(LocalEntryNotFoundError) as unknown_sha:
        hf_hub_download(REPO, "config.json", revision=UNKNOWN_SHA)
    assert isinstance(unknown_sha.value.__cause__, HfHubHTTPError)
    assert unknown_sha.value.__cause__.response.status_code == 500
    assert time.monotonic() - start < FAILURE_GUARD_S
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")


def test_unreachable_hub(
    hub_env: HubEnv, shas: tuple[str, str], dead_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = shas
    cached = hf_hub_download(REPO, "config.json", revision=first)
    set_endpoint(monkeypatch, dead_endpoint)
    assert hf_hub_download(REPO, "config.json", revision=first) == cached  # pinned and cached: no request
    start = time.monotonic()
    with pytest.raises(LocalEntryNotFoundError) as not_cached:
        hf_hub_download(REPO, "weights.bin", revision=first)
    assert isinstance(not_cached.value.__cause__, httpx2.ConnectError)
    assert time.monotonic() - start < FAILURE_GUARD_S


def test_subprocesses_see_the_local_hub(hub_env: HubEnv, shas: tuple[str, str]) -> None:
    code = (
        "import sys; from huggingface_hub import hf_hub_download; "
        "sys.stdout.write(hf_hub_download(sys.argv[1], 'config.json', revision=sys.argv[2]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, REPO, shas[0]], capture_output=True, text=True, timeout=60, check=True
    )
    assert Path(result.stdout).is_relative_to(hub_env.cache_dir)
    assert _read(result.stdout) == CONFIG_V1


def test_commit_refuses_what_olah_cannot_serve(hub_server: HubServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="olah answers 500"):
        hub_server.create_repo("selfens-tests/lfs-window", {"small.bin": b"\xff" * 130})
    assert not hub_server.repo_path("selfens-tests/lfs-window").exists()
    text, local = b"t" * 130, tmp_path / "local.bin"
    local.write_bytes(os.urandom(1000))
    assert len(hub_server.create_repo("selfens-tests/paths", {"small.txt": text, "copied.bin": local})) == 40


def test_stop_and_start(hub_env: HubEnv, shas: tuple[str, str]) -> None:
    hub_env.server.stop()
    try:
        with pytest.raises(LocalEntryNotFoundError) as down:
            hf_hub_download(REPO, "config.json", revision=shas[1])
        assert isinstance(down.value.__cause__, httpx2.ConnectError)
    finally:
        hub_env.server.start()
    assert _read(hf_hub_download(REPO, "config.json", revision=shas[1])) == CONFIG_V2
