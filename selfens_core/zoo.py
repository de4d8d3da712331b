"""The model zoo: pretrained self-ensembles by name, served from the Hugging Face Hub or from a bundled copy.

An entry is a folder ``<name>.<tag>/`` in a zoo source (a directory a plugin registers through the
``register_zoo_sources`` hook). Its ``manifest.json`` pins the Hub repo, the commit, and the sha256 and size of each
file; the folder may also hold the files themselves (the bundled copy). A name without a tag means the entry whose
manifest says ``"default": true``.

Files come from the HF cache or the Hub at the pinned commit (only the cache when ``HF_HUB_OFFLINE`` is set); when
that fails, from the bundled copy; else the error names the repo, revision and cache path. Every file is checked
against its sha256 before use, and a cached file that fails is deleted so it is never used again.
"""
from __future__ import annotations

import fnmatch
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hub import HubSettings, IntegrityError, discard_cached, download, unavailable_errors, verify
from .registry import UnknownNameError, unknown_message

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "selfens-zoo/1"


class ZooUnavailableError(RuntimeError):
    """An entry's files could be found neither on the Hub, nor in the cache, nor bundled."""


@dataclass(frozen=True)
class ZooEntry:
    """One pretrained model as its manifest describes it."""

    name: str
    tag: str
    repo_id: str
    revision: str | None
    files: dict[str, dict[str, Any]]
    directory: Path
    source: str
    default: bool = False
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.name}.{self.tag}"

    @property
    def bundled(self) -> bool:
        """Whether every file of the entry lies beside its manifest."""
        return all((self.directory / f).is_file() for f in self.files)

    @classmethod
    def read(cls, manifest: Path, source: str) -> ZooEntry:
        try:
            data = json.loads(manifest.read_text())
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            return cls(name=data["name"], tag=data["tag"], repo_id=data["repo_id"], revision=data.get("revision"),
                       files=data["files"], directory=manifest.parent, source=source,
                       default=bool(data.get("default")), summary=data.get("summary", {}))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"zoo manifest {manifest} is invalid: {type(error).__name__}: {error}") from None

    def to_manifest(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "name": self.name, "tag": self.tag, "default": self.default,
                "repo_id": self.repo_id, "revision": self.revision, "files": self.files, "summary": self.summary}


def entries() -> dict[str, ZooEntry]:
    """Every entry of every registered zoo source by full name (``name.tag``); manifests are read on each call."""
    from .plugins import registries

    found: dict[str, ZooEntry] = {}
    sources = registries().zoo_sources
    for source in sources.names():
        for manifest in sorted(Path(sources.get(source)).glob(f"*/{MANIFEST_FILE}")):
            entry = ZooEntry.read(manifest, source)
            if entry.full_name in found:
                raise ValueError(f"zoo entry {entry.full_name!r} is defined twice: by {found[entry.full_name].source} "
                                 f"({found[entry.full_name].directory}) and by {source} ({entry.directory})")
            found[entry.full_name] = entry
    return found


def list_pretrained(pattern: str = "*") -> list[str]:
    """Sorted full names (``name.tag``) of the zoo entries matching an fnmatch ``pattern``."""
    return sorted(n for n in entries() if fnmatch.fnmatchcase(n, pattern))


def resolve(ref: str) -> ZooEntry:
    """The entry ``name.tag``, or ``name``'s default entry."""
    known = entries()
    if ref in known:
        return known[ref]
    tagged = [e for e in known.values() if e.name == ref]
    defaults = [e for e in tagged if e.default] or (tagged if len(tagged) == 1 else [])
    if len(defaults) == 1:
        return defaults[0]
    if tagged:
        raise ValueError(f"zoo name {ref!r} has several tags and no single default; choose one of "
                         f"{', '.join(sorted(e.full_name for e in tagged))}")
    names = sorted({*known, *(e.name for e in known.values())})
    raise UnknownNameError(unknown_message("zoo entry", ref, names))


def fetch(entry: ZooEntry) -> tuple[Path, str]:
    """A directory holding the entry's verified files, and where they came from (``hub`` or ``bundled``)."""
    settings = HubSettings.from_env()
    hub_error: BaseException | None = None
    if entry.revision:
        try:
            return _fetch_from_hub(entry, settings), "hub"
        except unavailable_errors() as error:
            hub_error = error
    if entry.bundled:
        for filename, pinned in entry.files.items():
            verify(entry.directory / filename, pinned["sha256"], f"bundled {entry.full_name}/{filename}")
        if hub_error is not None:
            warnings.warn(f"zoo entry {entry.full_name}: the Hub gave no copy ({type(hub_error).__name__}); "
                          f"using the bundled copy in {entry.directory}", stacklevel=2)
        return entry.directory, "bundled"
    where = (f"repo {entry.repo_id} at revision {entry.revision}, cache {settings.repo_cache(entry.repo_id)}"
             if entry.revision else f"repo {entry.repo_id} (not yet published: no revision in its manifest)")
    mode = " (HF_HUB_OFFLINE is set: only the cache was tried)" if settings.offline and entry.revision else ""
    reason = f": {type(hub_error).__name__}: {hub_error}" if hub_error else ""
    raise ZooUnavailableError(f"zoo entry {entry.full_name} is not available from {where}{mode}, and it has no "
                              f"bundled copy in {entry.directory}{reason}")


def _fetch_from_hub(entry: ZooEntry, settings: HubSettings) -> Path:
    directory = None
    for filename, pinned in entry.files.items():
        path = download(entry.repo_id, entry.revision, filename, settings)
        try:
            verify(path, pinned["sha256"], f"{entry.repo_id}@{entry.revision}/{filename}")
        except IntegrityError as error:
            discard_cached(path)
            raise IntegrityError(f"{error}; the file was removed from the cache ({path})") from None
        directory = path.parent
    return directory


def load(ref: str, *, revision: str | None = None):
    """A pretrained self-ensemble in eval mode, its ``pretrained_cfg`` filled from ``config.json``.

    ``ref`` is a zoo name (``NAME`` for its default tag, or ``NAME.TAG``), ``hf-hub:org/repo[@revision]`` or
    ``local-dir:PATH``. Loading is strict: weights that do not fit the architecture in ``config.json`` are refused.
    ``revision`` overrides the revision of an ``hf-hub:`` reference (zoo entries are pinned by their manifest).
    """
    from .pretrained import load_pretrained

    if ref.startswith("local-dir:"):
        directory, origin = Path(ref.removeprefix("local-dir:")), {"local_dir": ref.removeprefix("local-dir:")}
    elif ref.startswith("hf-hub:"):
        repo_id, _, pinned = ref.removeprefix("hf-hub:").partition("@")
        revision = revision or pinned or "main"
        directory = _download_repo(repo_id, revision)
        origin = {"repo_id": repo_id, "revision": directory.name}
    else:
        if revision is not None:
            raise ValueError(f"zoo entries are pinned by their manifest; load hf-hub:REPO@{revision} to choose "
                             "another revision")
        entry = resolve(ref)
        directory, where = fetch(entry)
        origin = {"zoo": entry.full_name, "repo_id": entry.repo_id, "revision": entry.revision, "from": where}
    model = load_pretrained(directory)
    model.pretrained_cfg["origin"] = origin
    return model


def _download_repo(repo_id: str, revision: str) -> Path:
    """``config.json`` and ``model.safetensors`` of any Hub repo in the selfens layout (no manifest to check)."""
    from .pretrained import CONFIG_FILE, WEIGHTS_FILE

    settings = HubSettings.from_env()
    try:
        return [download(repo_id, revision, f, settings) for f in (CONFIG_FILE, WEIGHTS_FILE)][-1].parent
    except unavailable_errors() as error:
        raise ZooUnavailableError(f"hf-hub:{repo_id}@{revision} is not available (cache "
                                  f"{settings.repo_cache(repo_id)}): {type(error).__name__}: {error}") from error
