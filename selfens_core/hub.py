"""Files from the Hugging Face Hub, with the settings read when they are used and every file checked by sha256.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache location once, at import. selfens reads them
at call time (:class:`HubSettings`) and passes them explicitly, so a process can change them between calls (tests, a
notebook that goes offline) and the behaviour follows the environment as it is now.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"


class IntegrityError(RuntimeError):
    """A file's sha256 differs from the one its manifest pins."""


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubSettings:
    """Where files come from and where they are cached, as the environment says now."""

    endpoint: str
    cache_dir: Path
    offline: bool

    @classmethod
    def from_env(cls) -> HubSettings:
        home = Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or home / "hub"
        return cls(endpoint=(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
                   cache_dir=Path(cache).expanduser(), offline=_is_true(os.environ.get("HF_HUB_OFFLINE")))

    def repo_cache(self, repo_id: str) -> Path:
        """The cache folder huggingface_hub uses for a model repo (``models--org--name``)."""
        return self.cache_dir / ("models--" + repo_id.replace("/", "--"))


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the Hub could not give us this file": offline with nothing cached, connection failures,
    HTTP errors (including the missing repo, revision or file). All others (bugs, bad arguments) propagate.

    Transport errors that huggingface_hub does not translate (e.g. a connection reset) come from the HTTP client it is
    built on (httpx in 1.x, httpx2 in 2.x), whose base class its ``errors`` module re-exports as ``HTTPError``."""
    from huggingface_hub.errors import HTTPError

    return OSError, HTTPError


def download(repo_id: str, revision: str, filename: str, settings: HubSettings) -> Path:
    """One file of ``repo_id`` at ``revision``, from the HF cache or the Hub (never the Hub when offline)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=settings.cache_dir,
                                endpoint=settings.endpoint, local_files_only=settings.offline))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, sha256: str, what: str) -> None:
    """Raise :class:`IntegrityError` naming ``what`` and both hashes unless ``path`` hashes to ``sha256``."""
    actual = sha256_file(path)
    if actual != sha256:
        raise IntegrityError(f"{what}: sha256 {actual} does not match the pinned {sha256}")


def discard_cached(path: Path) -> None:
    """Remove a cached file (its snapshot link and the blob it points to) so the next call downloads it again."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)
