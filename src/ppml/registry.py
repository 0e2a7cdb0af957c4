"""Implementations registered by name and imported on first use, the way fsspec maps protocols to classes.

One mechanism serves file formats, key management services, evidence verifiers and attesters, so they all
follow the same rules: names are case-insensitive (the registered spelling is the canonical one), aliases
resolve to a name, built-in entries are ``"module:Class"`` strings imported only when first asked for, a
missing optional dependency names the extra to install, and nothing is replaced silently.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from ppml.errors import ConfigError, UsageError

__all__ = ["Registry", "lazy_exports"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes by name.

    Parameters
    ----------
    what
        What the entries are, for messages (``"file format"``, ``"key management service"``).
    attribute
        The class attribute holding an implementation's name (``"name"``, ``"type"``).
    known
        Built-in entries: name -> ``"module:Class"``, or ``("module:Class", extra)`` when the module needs
        the optional extra ``ppml[extra]``.
    aliases
        Other accepted names: alias -> name.
    """

    def __init__(self, what: str, *, attribute: str = "name",
                 known: Mapping[str, str | tuple[str, str | None]] | None = None,
                 aliases: Mapping[str, str] | None = None) -> None:
        self.what = what
        self._attribute = attribute
        self._known: dict[str, tuple[str, str | None]] = {
            name: (entry, None) if isinstance(entry, str) else entry for name, entry in (known or {}).items()
        }
        self._loaded: dict[str, type[T]] = {}
        self._aliases: dict[str, str] = {alias.lower(): name for alias, name in (aliases or {}).items()}

    def _names(self) -> dict[str, str]:
        """lower-case name -> canonical name, for every entry."""
        return {name.lower(): name for name in (*self._known, *self._loaded)}

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name`` or of the name it is an alias of; raises for an unknown name."""
        lowered = name.lower()
        found = self._names().get(self._aliases.get(lowered, lowered).lower())
        if found is None:
            raise UsageError(f"unknown {self.what} {name!r}", hint="choose one of: " + ", ".join(self.names()))
        return found

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        lowered = name.lower()
        return self._aliases.get(lowered, lowered).lower() in self._names()

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``, imported on first use."""
        canonical = self.canonical(name)
        if canonical not in self._loaded:
            target, extra = self._known[canonical]
            module, _, cls_name = target.partition(":")
            try:
                self._loaded[canonical] = getattr(importlib.import_module(module), cls_name)
            except ImportError as exc:
                # A module that did import but lacks a name ("cannot import name ...") is installed, only too old.
                missing = (f"a newer {exc.name.partition('.')[0]} than the one installed"
                           if exc.name in sys.modules else f"packages that are not installed ({exc.name})")
                raise ConfigError(
                    f"the {canonical!r} {self.what} needs {missing}",
                    hint=f"pip install 'ppml[{extra}]'" if extra else None,
                ) from None
        return self._loaded[canonical]

    def register(self, cls: type[T], *, replace: bool = False) -> None:
        """Add ``cls`` under its name (and its ``aliases`` attribute, if any); refuses to replace an entry
        silently. Re-registering a built-in entry's own class is allowed."""
        name = getattr(cls, self._attribute)
        aliases = tuple(getattr(cls, "aliases", ()))
        target = f"{cls.__module__}:{cls.__qualname__}"
        taken = self._names()
        for candidate in (name, *aliases):
            lowered = candidate.lower()
            existing = taken.get(self._aliases.get(lowered, lowered).lower())
            if existing is None or replace:
                continue
            if existing in self._loaded and self._loaded[existing] is cls:
                continue
            if existing in self._known and self._known[existing][0] == target and existing not in self._loaded:
                continue
            article = "an" if self.what[:1].lower() in "aeiou" else "a"
            raise ValueError(f"{article} {self.what} named {candidate!r} is already registered; pass replace=True "
                             "to replace it")
        stale = taken.get(name.lower())
        if stale is not None and stale != name:  # replacing under another spelling: one entry per name
            self._known.pop(stale, None)
            self._loaded.pop(stale, None)
        self._loaded[name] = cls
        for alias in aliases:
            self._aliases[alias.lower()] = name

    def names(self) -> list[str]:
        """Every registered name (aliases excluded), sorted case-insensitively."""
        return sorted(self._names().values(), key=str.lower)


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for ``names`` (name -> module), each imported on first use,
    so that importing the package imports none of them."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
