"""Paths and URLs through fsspec: local files, and any fsspec protocol (``abfs://``, ``az://``, ...).

Outputs are written under temporary names and moved into place only when complete, so a failed run
never leaves a half-written file or tree that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ppml.errors import AlreadyExistsError, ConfigError, NotFoundError

__all__ = ["Location", "locate", "staged_output"]

_PROTOCOL_EXTRAS = {"abfs": "azure", "abfss": "azure", "az": "azure"}
HIDDEN_PREFIXES = (".", "_")


@dataclass(frozen=True)
class Location:
    """A file system and a path on it."""

    fs: fsspec.AbstractFileSystem
    path: str
    url: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.path)

    def child(self, relative: str) -> Location:
        path = posixpath.join(self.path, relative)
        return Location(self.fs, path, self.fs.unstrip_protocol(path) if not self.is_local else path)

    def sibling(self, name: str) -> Location:
        path = posixpath.join(posixpath.dirname(self.path.rstrip("/")), name)
        return Location(self.fs, path, self.fs.unstrip_protocol(path) if not self.is_local else path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def size(self) -> int:
        return int(self.fs.size(self.path))

    def open(self, mode: str = "rb") -> BinaryIO:
        if "r" in mode and not self.fs.exists(self.path):
            raise NotFoundError(f"{self.url} does not exist")
        if "w" in mode and self.is_local:
            self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
        return self.fs.open(self.path, mode)

    def files(self, *, include_hidden: bool = False) -> list[tuple[str, int]]:
        """``(relative path, size)`` of every file below this folder (or of this file), sorted.

        Names starting with ``.`` or ``_`` (``.meta``, ``_SUCCESS``, Spark's temporary folders) are
        skipped unless ``include_hidden``.
        """
        if not self.fs.exists(self.path):
            raise NotFoundError(f"{self.url} does not exist")
        if not self.fs.isdir(self.path):
            return [("", self.size())]
        root = self.path.rstrip("/")
        found = []
        for path, info in self.fs.find(root, detail=True).items():
            relative = posixpath.relpath(path, root)
            if include_hidden or not any(part.startswith(HIDDEN_PREFIXES) for part in relative.split("/")):
                found.append((relative, int(info.get("size") or 0)))
        return sorted(found)


def locate(url: str | os.PathLike, **storage_options: object) -> Location:
    """Resolve a local path or an fsspec URL."""
    text = os.fspath(url)
    protocol = text.split("://", 1)[0] if "://" in text else "file"
    try:
        fs, path = fsspec.core.url_to_fs(text, **storage_options)
    except ImportError as exc:
        extra = _PROTOCOL_EXTRAS.get(protocol)
        raise ConfigError(f"cannot open {text}: support for {protocol}:// is not installed ({exc})",
                          hint=f"pip install 'ppml[{extra}]'" if extra else None) from None
    except ValueError as exc:
        raise ConfigError(f"cannot open {text}: {exc}") from None
    if isinstance(fs, LocalFileSystem):
        path = os.path.abspath(os.path.expanduser(path))
    return Location(fs, path, text)


@contextlib.contextmanager
def staged_output(target: Location, *, force: bool) -> Iterator[Location]:
    """Yield a temporary sibling of ``target`` to write into; move it into place on success.

    An existing ``target`` raises :class:`~ppml.errors.AlreadyExistsError` unless ``force``. On error
    the temporary output is deleted and ``target`` is left as it was.
    """
    if target.exists() and not force:
        raise AlreadyExistsError(f"{target.url} already exists", hint="pass --force to replace it")
    token = os.urandom(4).hex()
    staging = target.sibling(f".{target.name}.ppml-partial-{token}")
    try:
        yield staging
        if not staging.exists():  # an empty tree: still produce an (empty) folder
            staging.fs.makedirs(staging.path, exist_ok=True)
        _replace(staging, target, token)
    except BaseException:
        if staging.exists():
            staging.fs.rm(staging.path, recursive=True)
        raise


def _replace(staging: Location, target: Location, token: str) -> None:
    old = None
    if target.exists():
        old = target.sibling(f".{target.name}.ppml-old-{token}")
        _move(target, old)
    _move(staging, target)
    if old is not None:
        old.fs.rm(old.path, recursive=True)


def _move(src: Location, dst: Location) -> None:
    if src.is_local:
        os.replace(src.path, dst.path)
    else:
        src.fs.mv(src.path, dst.path, recursive=True)
