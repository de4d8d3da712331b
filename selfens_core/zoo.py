"""The model zoo: pretrained self-ensembles by name, served from the Hugging Face Hub or from a bundled copy.

An entry is a folder ``<name>.<tag>/`` in a zoo source (a directory a plugin registers through the
``register_zoo_sources`` hook). Its ``manifest.json`` pins the Hub repo, the commit, and the sha256 and size of each
file (the size is informational; the sha256 is what is checked); the folder may also hold the files themselves (the
bundled copy). A name without a tag means the entry whose manifest says ``"default": true``, or the name's only entry
when it has one tag.

Files come from the HF cache or the Hub at the pinned commit (only the cache when ``HF_HUB_OFFLINE`` is set); when
that fails, from the bundled copy; else the error names the repo, revision and cache path. Every file is checked
against its sha256 before use, and a cached file that fails is deleted so it is never used again. A ``local-dir:``
folder that carries a ``manifest.json`` is checked against it too.

A manifest that cannot be read (bad JSON, a missing key), or an entry a second source defines again, is skipped
with a warning naming its manifest (an error with ``SELFENS_STRICT_PLUGINS=1``): every other entry still loads. Zoo
names resolve to the zoo only; a local folder is ``local-dir:PATH``.
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
REFERENCE_FORMS = "NAME[.TAG] (a zoo entry), hf-hub:ORG/REPO[@REVISION] or local-dir:PATH"


class ZooUnavailableError(RuntimeError):
    """An entry's files could be found neither on the Hub, nor in the cache, nor bundled."""


class ZooManifestError(ValueError):
    """A zoo manifest that cannot be read, or that lists files it may not."""


_REQUIRED = {"name": str, "tag": str, "repo_id": str, "files": dict}
# what load_pretrained reads (pretrained.CONFIG_FILE, WEIGHTS_FILE; not imported: reading manifests needs no torch)
PINNED_FILES = ("config.json", "model.safetensors")


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
        """The entry a manifest describes; :class:`ZooManifestError` naming the manifest and the problem."""
        try:
            data = json.loads(manifest.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ZooManifestError(f"zoo manifest {manifest} is invalid: {type(error).__name__}: {error}") from None
        problem = _manifest_problem(data)
        if problem:
            raise ZooManifestError(f"zoo manifest {manifest} is invalid: {problem}")
        return cls(name=data["name"], tag=data["tag"], repo_id=data["repo_id"], revision=data.get("revision"),
                   files=data["files"], directory=manifest.parent, source=source,
                   default=bool(data.get("default")), summary=data.get("summary") or {})

    def to_manifest(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "name": self.name, "tag": self.tag, "default": self.default,
                "repo_id": self.repo_id, "revision": self.revision, "files": self.files, "summary": self.summary}


def _manifest_problem(data: Any) -> str | None:
    """What is wrong with a parsed manifest, or None."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    if data.get("format") != MANIFEST_FORMAT:
        return f"format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}"
    for key, kind in _REQUIRED.items():
        if key not in data:
            return f"the key {key!r} is missing"
        if not isinstance(data[key], kind):
            return f"{key!r} is a {type(data[key]).__name__}, expected a {kind.__name__}"
    for key, kind in (("revision", str), ("summary", dict)):
        if data.get(key) is not None and not isinstance(data[key], kind):
            return f"{key!r} is a {type(data[key]).__name__}, expected a {kind.__name__} or null"
    for filename, pinned in data["files"].items():
        if Path(filename).is_absolute() or ".." in Path(filename).parts or "\\" in filename:
            return f"file {filename!r} is not a plain path inside the entry"
        if not (isinstance(pinned, dict) and isinstance(pinned.get("sha256"), str) and len(pinned["sha256"]) == 64):
            return f"file {filename!r} has no sha256 (64 hex digits): {pinned!r}"
    unpinned = [f for f in PINNED_FILES if f not in data["files"]]
    if unpinned:
        return f"it does not pin {' and '.join(unpinned)}: nothing would check what is loaded"
    return None


def _skip(message: str) -> None:
    """A zoo entry that cannot be used: skipped with a warning, or an error in strict mode."""
    from .plugins import STRICT_VARIABLE, strict_mode

    if strict_mode():
        raise ZooManifestError(f"{message} ({STRICT_VARIABLE} is set: unset it to skip the entry with a warning)")
    warnings.warn(f"{message}; the entry is skipped (set {STRICT_VARIABLE}=1 to make this an error)", stacklevel=4)


def _scan() -> tuple[dict[str, ZooEntry], list[str]]:
    """Every usable entry by full name, and a note for each skipped one. Sources are read built-in first, so a
    third-party source cannot take a built-in entry's name."""
    from .plugins import registries

    found: dict[str, ZooEntry] = {}
    skipped: list[str] = []
    sources = registries().zoo_sources
    for source in sorted(sources.names(), key=lambda n: (not sources.entry(n).builtin, n)):
        for manifest in sorted(Path(sources.get(source)).glob(f"*/{MANIFEST_FILE}")):
            try:
                entry = ZooEntry.read(manifest, source)
            except ZooManifestError as error:
                skipped.append(str(error))
                _skip(f"zoo source {source!r}: {error}")
                continue
            held = found.get(entry.full_name)
            if held is not None:
                message = (f"zoo entry {entry.full_name!r} is defined twice: by {held.source} ({held.directory}) and "
                           f"by {source} ({entry.directory}); the first is kept")
                skipped.append(message)
                _skip(message)
                continue
            found[entry.full_name] = entry
    return found, skipped


def entries() -> dict[str, ZooEntry]:
    """Every entry of every registered zoo source by full name (``name.tag``); manifests are read on each call. An
    entry whose manifest is broken, or that a second source defines again, is skipped with a warning (an error in
    strict mode); the others load."""
    return _scan()[0]


def list_pretrained(pattern: str = "*") -> list[str]:
    """Sorted full names (``name.tag``) of the zoo entries matching an fnmatch ``pattern``."""
    return sorted(n for n in entries() if fnmatch.fnmatchcase(n, pattern))


def resolve(ref: str) -> ZooEntry:
    """The entry ``name.tag``, or ``name``'s default entry (its only entry when it has one tag)."""
    from .plugins import registries

    known, skipped = _scan()
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
    unavailable = [*registries().zoo_sources.unavailable, *(f"skipped: {note}" for note in skipped)]
    message = unknown_message("zoo entry", ref, names, unavailable=unavailable)
    if Path(ref).is_dir():
        message += f" A folder {ref} exists: load it with local-dir:{ref}."
    elif ":" in ref:
        message += f" A reference is {REFERENCE_FORMS}."
    raise UnknownNameError(message)


def is_reference(ref: str) -> bool:
    """Whether ``ref`` names something :func:`load` loads: ``hf-hub:``, ``local-dir:``, or a zoo entry (``NAME`` or
    ``NAME.TAG``). A zoo name wins over a folder of the same name in the working directory, with a warning."""
    if ref.startswith(("hf-hub:", "local-dir:")):
        return True
    if "/" in ref or "\\" in ref:  # a path: zoo names have no separator
        return False
    known = entries()
    if ref not in {n for e in known.values() for n in (e.name, e.full_name)}:
        return False
    if Path(ref).exists():
        warnings.warn(f"{ref!r} is a zoo entry and also a folder in the working directory; using the zoo entry "
                      f"(for the folder, use local-dir:{ref} or ./{ref})", stacklevel=2)
    return True


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
    ``local-dir:PATH`` (checked against its ``manifest.json`` first, when it has one; a bare path is not a
    reference, so a folder never shadows a zoo name). Loading is strict: weights that do not fit the architecture
    in ``config.json`` are refused. ``revision`` overrides the revision of an ``hf-hub:`` reference (zoo entries are
    pinned by their manifest).
    """
    from .pretrained import load_pretrained

    if not isinstance(ref, str) or not ref.strip():
        raise TypeError(f"load() takes a reference: {REFERENCE_FORMS}; got {ref!r}")
    if ref.startswith("local-dir:"):
        directory, origin = Path(ref.removeprefix("local-dir:")), {"local_dir": ref.removeprefix("local-dir:")}
        verify_local(directory)
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


def load_for_run(ref: str, run_cfg: dict[str, Any], what: str, whose: str = "this run's data"):
    """:func:`load` for a model a run reuses (a teacher, a member's initial weights): any failure to load it, and a
    model trained on data other than ``run_cfg``'s (:func:`~selfens_core.pretrained.check_same_data`), is a
    ``ValueError`` naming ``what``."""
    from .pretrained import check_same_data

    try:
        model = load(ref)
    except Exception as error:  # unknown name, missing directory, unavailable repo, weights that do not fit, ...
        raise ValueError(f"{what} could not be loaded: {type(error).__name__}: {error}") from error
    check_same_data(what, model.pretrained_cfg, run_cfg, whose)
    return model


def verify_local(directory: Path) -> None:
    """Check a local folder against its ``manifest.json``, when it has one: every file the manifest pins must be
    there and match its sha256 (:class:`IntegrityError` naming the file and both hashes), before anything is
    loaded. A folder without a manifest (a run directory) has nothing to check against."""
    manifest = directory / MANIFEST_FILE
    if not manifest.is_file():
        return
    entry = ZooEntry.read(manifest, "local-dir")
    for filename, pinned in entry.files.items():
        path = directory / filename
        if not path.is_file():
            raise IntegrityError(f"{path} is pinned by {manifest} but missing")
        verify(path, pinned["sha256"], f"{path} (pinned by {manifest})")


def _download_repo(repo_id: str, revision: str) -> Path:
    """``config.json`` and ``model.safetensors`` of any Hub repo in the selfens layout (no manifest to check)."""
    from .pretrained import CONFIG_FILE, WEIGHTS_FILE

    settings = HubSettings.from_env()
    try:
        return [download(repo_id, revision, f, settings) for f in (CONFIG_FILE, WEIGHTS_FILE)][-1].parent
    except unavailable_errors() as error:
        raise ZooUnavailableError(f"hf-hub:{repo_id}@{revision} is not available (cache "
                                  f"{settings.repo_cache(repo_id)}): {type(error).__name__}: {error}") from error
