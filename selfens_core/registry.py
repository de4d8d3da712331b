"""Name → object registries filled by plugins, with timm-like lookup and errors that list what exists."""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that no plugin registered. The message lists close matches and what exists."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object and where it came from."""

    name: str
    obj: T
    plugin: str
    options: dict[str, Any] = field(default_factory=dict)
    version: str | None = None  # the plugin's distribution version; None for a plugin registered in-process
    builtin: bool = False  # registered by selfens itself: the name is reserved (see check_free)


class NameConflictError(ValueError):
    """A plugin registered a name that another plugin already holds."""


def check_free(kind: str, entries: dict[str, Entry[Any]], name: str, plugin: str, replace: bool) -> None:
    """Refuse to register ``name`` again, except to replace a built-in entry on purpose (``replace=True``).

    Built-ins register first, so a third-party plugin cannot take a built-in name by accident, and two third-party
    plugins that want one name are reported rather than resolved by load order.
    """
    held = entries.get(name)
    if held is None or (replace and held.builtin):
        return
    hint = "; it is built in: pass replace=True to replace it" if held.builtin else ""
    raise NameConflictError(f"{kind} {name!r} from plugin {plugin!r} is already registered by plugin "
                            f"{held.plugin!r}{hint}")


class Registry(Generic[T]):
    """A flat registry of one kind of component (combiners, distillers, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        # Why a name may be missing: plugins that could provide it but are disabled or failed (set by the loader).
        self.unavailable: list[str] = []

    def add(self, name: str, obj: T, *, plugin: str, version: str | None = None, builtin: bool = False,
            replace: bool = False, **options: Any) -> None:
        """Register ``obj`` as ``name`` on behalf of ``plugin``; :class:`NameConflictError` if the name is taken
        (see :func:`check_free`)."""
        check_free(self.kind, self._entries, name, plugin, replace)
        self._entries[name] = Entry(name, obj, plugin, options, version, builtin)

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def registered_by(self, plugin: str) -> list[str]:
        """The names one plugin registered here."""
        return sorted(n for n, e in self._entries.items() if e.plugin == plugin)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(unknown_message(self.kind, name, self.names(),
                                                   unavailable=self.unavailable)) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def __contains__(self, name: str) -> bool:
        return name in self._entries


class ModelRegistry(Registry[Callable[..., Any]]):
    """Model builders by exact name, plus open families (``prefix-<anything>``) resolved by longest prefix."""

    def __init__(self) -> None:
        super().__init__("model")
        self._families: dict[str, Entry[Callable[..., Any]]] = {}

    def add_family(self, prefix: str, builder: Callable[..., Any], *, plugin: str, version: str | None = None,
                   builtin: bool = False, replace: bool = False, examples: list[str] = (),
                   accepts: Callable[[str], bool] | None = None, suffix: str | None = None, **options: Any) -> None:
        """``accepts(suffix)`` tells whether the family can build ``prefix + suffix`` (e.g. a known timm name), so a
        misspelt exact name is reported as unknown rather than handed to the family; ``suffix`` says in words what
        completes the prefix (``"timm model name"``), for listings."""
        check_free("model family", self._families, prefix, plugin, replace)
        self._families[prefix] = Entry(prefix, builder, plugin, {"examples": list(examples),
                                                                 "accepts": accepts or _any_suffix,
                                                                 "suffix": suffix, **options}, version, builtin)

    def names(self, pattern: str = "*") -> list[str]:
        """Exact names and the families' examples matching ``pattern`` (a family builds more: see :meth:`family`
        and :meth:`describe_families`)."""
        examples = [e for fam in self._families.values() for e in fam.options["examples"]]
        return sorted(n for n in {*self._entries, *examples} if fnmatch.fnmatchcase(n, pattern))

    def families(self) -> list[str]:
        return sorted(f"{prefix}<name>" for prefix in self._families)

    def family(self, name: str) -> str | None:
        """The prefix of the family that would build ``name`` (not an exact name), or None."""
        if name in self._entries:
            return None
        try:
            entry, suffix = self.resolve(name)
        except UnknownNameError:
            return None
        return entry.name if suffix is not None else None

    def describe_families(self, pattern: str = "*") -> list[dict[str, Any]]:
        """The families whose names may match ``pattern``, each as ``{"pattern", "accepts", "examples", "plugin"}``:
        ``pattern`` is ``prefix<what completes it>``, ``accepts`` says which suffixes the family builds, ``examples``
        are its examples matching ``pattern``."""
        head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]  # the literal start of the pattern
        found = []
        for prefix, entry in sorted(self._families.items()):
            examples = [e for e in entry.options["examples"] if fnmatch.fnmatchcase(e, pattern)]
            if not (examples or head.startswith(prefix) or prefix.startswith(head)):
                continue
            if head == pattern and not (examples or self.family(pattern) == prefix):
                continue  # an exact name that this family does not build
            found.append({"pattern": f"{prefix}<{_suffix_words(entry)}>", "accepts": _accepts_words(entry),
                          "examples": examples, "plugin": entry.plugin})
        return found

    def registered_by(self, plugin: str) -> list[str]:
        """The exact names and the families (``prefix<name>``) one plugin registered."""
        families = [f"{p}<name>" for p, e in self._families.items() if e.plugin == plugin]
        return sorted([*super().registered_by(plugin), *families])

    def resolve(self, name: str) -> tuple[Entry[Callable[..., Any]], str | None]:
        """Return the entry building ``name`` and, for a family, the suffix after its prefix."""
        if name in self._entries:
            return self._entries[name], None
        for prefix in sorted(self._families, key=len, reverse=True):
            family, suffix = self._families[prefix], name[len(prefix):]
            if name.startswith(prefix) and suffix and family.options["accepts"](suffix):
                return family, suffix
        raise UnknownNameError(unknown_message("model", name, self.names(), self.families(),
                                               unavailable=self.unavailable))


def _any_suffix(suffix: str) -> bool:
    return True


def _suffix_words(entry: Entry[Any]) -> str:
    """What completes a family's prefix, in words: its ``suffix`` option, else ``name``."""
    return entry.options.get("suffix") or "name"


def _accepts_words(entry: Entry[Any]) -> str:
    """Which suffixes a family builds, in words: any, or those its ``accepts`` function takes (with the first line
    of that function's docstring)."""
    accepts, words = entry.options["accepts"], _suffix_words(entry)
    if accepts is _any_suffix:
        return f"any {words}"
    what = getattr(accepts, "__qualname__", None) or type(accepts).__name__
    doc = (getattr(accepts, "__doc__", None) or "").strip().splitlines()
    hint = f" ({doc[0].rstrip('.')})" if doc and not entry.options.get("suffix") else ""
    return f"a {words} that {what}() accepts{hint}"


def first_names(names: list[str], shown: int = 8) -> str:
    """The first ``shown`` of ``names`` and how many more, for messages about lists that can be long."""
    more = f", ... and {len(names) - shown} more ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def unknown_message(kind: str, name: str, known: list[str], families: list[str] = (),
                    unavailable: list[str] = ()) -> str:
    """``Unknown <kind> <name>.`` with close matches, what exists, and the plugins that are not loaded (disabled or
    failed: ``unavailable``), which may be why."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    fam = f" Families: {', '.join(families)}." if families else ""
    missing = f" Not loaded, and may provide it: {'; '.join(unavailable)}." if unavailable else ""
    return f"Unknown {kind} {name!r}.{hint} Known: {', '.join(known) or '(none)'}.{fam}{missing}"
