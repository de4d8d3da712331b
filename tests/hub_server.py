"""A local, offline Hugging Face Hub for tests: an `olah` server serving plain git repositories.

Loaded for the whole suite by ``pytest_plugins = ["hub_server"]`` in ``tests/conftest.py``; tests may also import
`HubServer`, `HubEnv`, `set_offline` and `set_endpoint` from it.

Fixtures
--------
``hub_server`` (session)
    Starts ``olah-cli`` on a free port of 127.0.0.1 in offline mode, waits until it answers, stops it at the end of the
    session, and yields a `HubServer`. Repositories are created with `HubServer.create_repo` / `HubServer.commit`
    under ``mirrors/models/<org>/<name>`` (plain git, no git-lfs). Tests are skipped when ``git`` or ``olah-cli`` (from
    the ``test`` extra) is missing. The server is shared by the session: give every repository its own ``repo_id``.
``hub_env`` (function)
    Points huggingface_hub at ``hub_server`` for in-process code and for subprocesses, with a fresh cache
    (``tmp_path / "hf-cache"``), and makes failures fast. Yields a `HubEnv`. Details below.
``dead_endpoint`` (function)
    ``http://127.0.0.1:<port>`` where nothing listens: connections are refused at once. Use it with `set_endpoint`
    (or ``endpoint=``) to simulate an unreachable Hub rather than stopping the shared server.

What ``hub_env`` patches, and why
---------------------------------
huggingface_hub reads its environment once, at import, into ``huggingface_hub.constants``; the download and API
functions then read those module attributes at call time. So every setting is applied twice: as an environment
variable (inherited by subprocesses, which import huggingface_hub afresh) and as the matching attribute (for this
process, where huggingface_hub is already imported). All of it is undone by ``monkeypatch`` after the test.

- ``HF_ENDPOINT`` / ``constants.ENDPOINT`` and ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (which ``hf_hub_url`` formats,
  derived from the endpoint at import), see `set_endpoint`. ``HfApi()`` reads ``constants.ENDPOINT`` when constructed:
  an instance created before the fixture keeps the old endpoint.
- ``HF_HUB_CACHE`` / ``constants.HF_HUB_CACHE`` (read by ``hf_hub_download``, ``snapshot_download``,
  ``try_to_load_from_cache``) and ``huggingface_hub.utils._cache_manager.HF_HUB_CACHE`` (a copy bound at import,
  the default of ``scan_cache_dir``).
- ``HF_HUB_OFFLINE`` unset / ``constants.HF_HUB_OFFLINE = False`` (``constants.is_offline_mode()`` returns it; the
  request hook of the shared HTTP client raises ``OfflineModeIsEnabled`` when it is true), see `set_offline`.
  ``TRANSFORMERS_OFFLINE`` is unset too, as huggingface_hub treats it as a synonym.
- ``HF_HUB_DISABLE_TELEMETRY=1`` / ``constants.HF_HUB_DISABLE_TELEMETRY``.
- No credentials: ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN`` and ``HF_OIDC_RESOURCE`` are unset, and ``HF_TOKEN_PATH`` /
  ``constants.HF_TOKEN_PATH`` / ``constants.HF_STORED_TOKENS_PATH`` point into ``tmp_path``, so a developer's saved
  token is neither sent nor required.
- ``NO_PROXY`` / ``no_proxy`` cover 127.0.0.1 and localhost: a CI proxy must not see local calls.
- No keep-alive: the shared HTTP client is closed (``huggingface_hub.close_session()``) and the next ones are built by
  huggingface_hub's default factory plus a ``Connection: close`` header (``huggingface_hub.utils._http.
  _GLOBAL_CLIENT_FACTORY``, what ``set_client_factory`` sets). Whenever olah answers 500 it drops the connection
  without saying so, and the client's next request on it fails with ``httpx2.ReadError`` ("Connection reset by
  peer"), which ``hf_hub_download`` does not translate: the *next* download, not the one that got the 500, fails.
  Subprocesses keep huggingface_hub's keep-alive client, so a subprocess should not request anything after a 500.
- Fast failures. On a network error or a 408/429/5xx answer, ``hf_hub_download`` (no cached copy) and most HfApi
  calls retry 5 times, sleeping 1, 2, 4, 8, 8 s (``max_retries=5, base_wait_time=1, max_wait_time=8`` are the
  defaults of ``http_backoff`` / ``http_stream_backoff``; no setting changes them): about 23 s for a refused
  connection, or for olah's 500 on an unknown 40-character revision. In this process the sleeps are cut to
  `RETRY_WAIT_S`, capped at `RETRY_MAX_WAIT_S` (the same 6 attempts, about 0.6 s in all), by wrapping
  ``huggingface_hub.utils._http._http_backoff_base``, which both call. The timeouts that bound a server that accepts
  but never answers are lowered to `TIMEOUT_S`: ``HF_HUB_ETAG_TIMEOUT`` / ``constants.HF_HUB_ETAG_TIMEOUT`` (first
  HEAD of ``hf_hub_download``), ``HF_HUB_DOWNLOAD_TIMEOUT`` / ``constants.HF_HUB_DOWNLOAD_TIMEOUT`` (GET of the file)
  and ``huggingface_hub.file_download._ETAG_RETRY_TIMEOUT`` (60 s, for the retried HEAD). A subprocess gets the
  timeouts but not the short sleeps: keep its failure cases in-process.

olah quirks (0.5.4, huggingface_hub 2.4.0)
------------------------------------------
- Missing file at a commit sha: ``RemoteEntryNotFoundError`` (404 ``EntryNotFound``), as on the real Hub; at a branch
  name (e.g. ``main``): ``RepositoryNotFoundError`` (401 ``RepoNotFound``), where the real Hub says
  ``RemoteEntryNotFoundError``.
- Unknown 40-character revision: olah answers 500, so ``hf_hub_download`` raises ``LocalEntryNotFoundError`` (cause
  ``HfHubHTTPError`` 500) after the retries; ``snapshot_download`` raises ``LocalEntryNotFoundError`` (cause
  ``RemoteEntryNotFoundError`` from the tree listing). Unknown branch name: ``RepositoryNotFoundError``.
- A file of 121 to 149 bytes that is not valid UTF-8 makes olah answer 500 (it decodes every file of that size to check
  for a git-lfs pointer), for the file and for the tree listing of the whole commit, so ``snapshot_download`` fails
  too. `HubServer.commit` refuses such files.
- A plain GET of a missing file answers 500 (its HEAD, which huggingface_hub sends first, answers 404 or 401).
- ``model_info`` / ``repo_info`` without a revision answer 401: always pass one. olah is read-only: publishing can only
  be tested by committing into the mirror repository or by mocking ``HfApi``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import file_download as hf_file_download
from huggingface_hub.utils import _cache_manager as hf_cache_manager
from huggingface_hub.utils import _http as hf_http

RETRY_WAIT_S = 0.05
"""First sleep between two retries of a failed Hub request under ``hub_env`` (huggingface_hub's default: 1 s)."""
RETRY_MAX_WAIT_S = 0.1
"""Longest sleep between two retries under ``hub_env`` (huggingface_hub's default: 8 s)."""
TIMEOUT_S = 5
"""Connect/read timeout of file metadata and download requests under ``hub_env`` (defaults: 10 s, and 60 s)."""
STARTUP_TIMEOUT_S = 20.0
"""How long `HubServer.start` waits for olah to answer (it usually takes 1 to 1.5 s)."""

OLAH_BAD_SIZES = range(121, 150)
"""Sizes (bytes) at which olah decodes a file as UTF-8 to look for a git-lfs pointer, failing with 500 if it can't."""

_GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}


def _free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _olah_cli() -> str | None:
    """The ``olah-cli`` executable: on PATH, or next to this interpreter (a venv used without activation)."""
    beside_python = Path(sys.executable).with_name("olah-cli")
    return shutil.which("olah-cli") or (str(beside_python) if beside_python.is_file() else None)


def _tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it does not exist."""
    if not path.is_file():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class HubServer:
    """An olah server on 127.0.0.1 serving the git repositories under `mirrors`, with its files under `root`."""

    root: Path
    port: int
    olah_cli: str
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        """The server's URL, for ``HF_ENDPOINT`` or ``endpoint=``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def mirrors(self) -> Path:
        """The folder of served repositories: model ``org/name`` is the git repository ``mirrors/models/org/name``."""
        return self.root / "mirrors"

    def repo_path(self, repo_id: str) -> Path:
        """The git repository serving model ``repo_id`` (``"org/name"``)."""
        org, sep, name = repo_id.partition("/")
        if not (org and sep and name) or "/" in name or ".." in (org, name):
            raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
        return self.mirrors / "models" / org / name

    def create_repo(self, repo_id: str, files: Mapping[str, bytes | Path], message: str = "initial commit") -> str:
        """Create model repository ``repo_id`` on branch ``main`` with ``files``; return the commit's 40-hex sha.

        ``files`` maps paths in the repository (``/``-separated) to their content, or to a local file to copy.
        Raises `FileExistsError` if the repository exists, `ValueError` (creating nothing) for a file olah cannot
        serve (see `commit`).
        """
        path = self.repo_path(repo_id)
        if path.exists():
            raise FileExistsError(f"repository {repo_id!r} already exists at {path}: use commit() to add to it")
        contents = _servable_contents(files)
        path.mkdir(parents=True)
        self._git(path, "init", "--quiet", "--initial-branch=main")
        self._git(path, "config", "user.name", "selfens tests")
        self._git(path, "config", "user.email", "tests@selfens.invalid")
        self._git(path, "config", "commit.gpgsign", "false")
        return self._commit(path, contents, message)

    def commit(self, repo_id: str, files: Mapping[str, bytes | Path], message: str = "update") -> str:
        """Write ``files`` into repository ``repo_id`` (adding or replacing them) and commit; return the new sha.

        Files are plain git blobs: no git-lfs, any size. A file of 121 to 149 bytes that is not valid UTF-8 raises
        `ValueError` before anything is written: olah would answer 500 for it and for the commit's tree listing.
        """
        path = self.repo_path(repo_id)
        if not (path / ".git").is_dir():
            raise FileNotFoundError(f"repository {repo_id!r} does not exist: use create_repo() first")
        return self._commit(path, _servable_contents(files), message)

    def start(self) -> None:
        """Start olah and wait until it answers; raise `RuntimeError` with its log tail if it doesn't in time."""
        if self._process is not None:
            raise RuntimeError("the hub server is already running")
        self.mirrors.mkdir(parents=True, exist_ok=True)
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f'repos-path = "{self.root / "olah-cache"}"\n'
            f'mirror-netloc = "127.0.0.1:{self.port}"\n'
            f'mirror-lfs-netloc = "127.0.0.1:{self.port}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            "[accessibility]\n"
            "offline = true\n"
        )
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / "console.log", "ab") as console:
            self._process = subprocess.Popen(
                [self.olah_cli, "-c", str(config), "--log-path", str(logs)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_ready()

    def stop(self) -> None:
        """Stop olah (SIGTERM, then SIGKILL after 10 s); a no-op if it isn't running."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _wait_until_ready(self) -> None:
        """Poll ``/api/whoami-v2`` until olah answers anything (offline, it answers 504), or fail with its logs."""
        assert self._process is not None
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                no_proxy.open(f"{self.endpoint}/api/whoami-v2", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                pass
            exit_code = self._process.poll()
            if exit_code is not None or time.monotonic() > deadline:
                self.stop()
                problem = (
                    f"exited with code {exit_code} before answering"
                    if exit_code is not None
                    else f"did not answer within {STARTUP_TIMEOUT_S:.0f} s"
                )
                raise RuntimeError(
                    f"olah on {self.endpoint} {problem}.\n"
                    f"--- {self.root / 'logs' / 'console.log'}\n{_tail(self.root / 'logs' / 'console.log')}\n"
                    f"--- {self.root / 'logs' / 'olah.log'}\n{_tail(self.root / 'logs' / 'olah.log')}"
                )
            time.sleep(0.05)

    def _commit(self, repo: Path, contents: Mapping[str, bytes], message: str) -> str:
        """Write ``contents`` into the git repository ``repo``, commit them, and return the commit's sha."""
        for name, data in contents.items():
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self._git(repo, "add", "--", *contents)
        self._git(repo, "commit", "--quiet", "--message", message)
        return self._git(repo, "rev-parse", "HEAD")

    @staticmethod
    def _git(repo: Path, *args: str) -> str:
        """Run git in ``repo``, isolated from the user's and the system's configuration; return its stripped stdout."""
        result = subprocess.run(
            ["git", *args], cwd=repo, env={**os.environ, **_GIT_ENV}, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed in {repo}:\n{result.stderr}")
        return result.stdout.strip()


@dataclass(frozen=True)
class HubEnv:
    """What ``hub_env`` set up: the server huggingface_hub points at, and the (initially empty) cache it uses."""

    server: HubServer
    cache_dir: Path


def _servable_contents(files: Mapping[str, bytes | Path]) -> dict[str, bytes]:
    """The bytes of each file of ``files``, after checking that its path is plain and that olah can serve it."""
    if not files:
        raise ValueError("a commit needs at least one file")
    contents = {name: data.read_bytes() if isinstance(data, Path) else data for name, data in files.items()}
    for name, data in contents.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or relative.parts[:1] == (".git",):
            raise ValueError(f"{name!r} is not a plain path inside the repository")
        if len(data) in OLAH_BAD_SIZES and not _is_utf8(data):
            raise ValueError(
                f"{name!r} is {len(data)} bytes of non-UTF-8 data: olah answers 500 for files of "
                f"{OLAH_BAD_SIZES.start}-{OLAH_BAD_SIZES.stop - 1} bytes that do not decode as UTF-8 "
                "(it checks them for git-lfs pointers); make the test file smaller or larger"
            )
    return contents


def _is_utf8(data: bytes) -> bool:
    """Whether ``data`` decodes as UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def set_offline(monkeypatch: pytest.MonkeyPatch, offline: bool) -> None:
    """Switch huggingface_hub's offline mode, for this process (``constants``) and subprocesses (environment).

    Offline, every request of huggingface_hub's HTTP client raises ``OfflineModeIsEnabled``; downloads are served from
    the cache or raise ``LocalEntryNotFoundError``.
    """
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)


def set_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point huggingface_hub at ``endpoint``, for this process (``constants``) and subprocesses (``HF_ENDPOINT``)."""
    endpoint = endpoint.rstrip("/")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    url_template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url_template)


def _client_without_keepalive() -> httpx2.Client:
    """huggingface_hub's default HTTP client, asking the server to close each connection after its response."""
    client = hf_http.default_client_factory()
    client.headers["Connection"] = "close"
    return client


def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorten the sleeps between huggingface_hub's HTTP retries to `RETRY_WAIT_S`..`RETRY_MAX_WAIT_S`."""
    backoff = hf_http._http_backoff_base

    def fast_backoff(*args: Any, **kwargs: Any) -> Iterator[httpx2.Response]:
        kwargs["base_wait_time"] = min(kwargs.get("base_wait_time", RETRY_WAIT_S), RETRY_WAIT_S)
        kwargs["max_wait_time"] = min(kwargs.get("max_wait_time", RETRY_MAX_WAIT_S), RETRY_MAX_WAIT_S)
        return backoff(*args, **kwargs)

    monkeypatch.setattr(hf_http, "_http_backoff_base", fast_backoff)


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """A running olah server for the session (see the module docstring); skips if git or olah-cli is missing."""
    olah_cli = _olah_cli()
    if olah_cli is None:
        pytest.skip("olah-cli not found: install the test extra (pip install -e '.[test]')")
    if shutil.which("git") is None:
        pytest.skip("git not found: the local Hub serves git repositories")
    server = HubServer(root=tmp_path_factory.mktemp("hub"), port=_free_port(), olah_cli=olah_cli)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dead_endpoint() -> str:
    """A Hub URL on 127.0.0.1 where nothing listens: every connection is refused."""
    return f"http://127.0.0.1:{_free_port()}"


@pytest.fixture
def hub_env(hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEnv]:
    """Point huggingface_hub at ``hub_server`` with an empty cache and fast failures (see the module docstring)."""
    cache_dir = tmp_path / "hf-cache"
    token_path = tmp_path / "hf-token" / "token"
    set_endpoint(monkeypatch, hub_server.endpoint)
    set_offline(monkeypatch, False)

    monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(hf_cache_manager, "HF_HUB_CACHE", str(cache_dir))

    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_path))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(token_path))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(token_path.with_name("stored_tokens")))

    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.setattr(hf_http, "_GLOBAL_CLIENT_FACTORY", _client_without_keepalive)
    huggingface_hub.close_session()

    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", str(TIMEOUT_S))
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", str(TIMEOUT_S))
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", TIMEOUT_S)
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", TIMEOUT_S)
    monkeypatch.setattr(hf_file_download, "_ETAG_RETRY_TIMEOUT", TIMEOUT_S)
    _fast_retries(monkeypatch)

    yield HubEnv(server=hub_server, cache_dir=cache_dir)
    huggingface_hub.close_session()  # the next client is built by the factory monkeypatch restores
