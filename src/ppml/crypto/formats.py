"""File formats ("crypto modes") behind one small interface, registered by name.

A format turns a raw binary file object into a plaintext reader or writer, given a data key. It knows
nothing of key management: the wrapped keys it stores are opaque :class:`~ppml.crypto.envelope.WrappedKey`
values that the keys layer produces and unwraps. Built-in formats:

==========================  =========  ============================================================
name (aliases)              suffix     what it is
==========================  =========  ============================================================
``aes_gcm_stream``          ``.ppml``  ppml's authenticated, seekable, Tink-compatible stream (default)
``aes/cbc/pkcs5padding``    ``.cbc``   BigDL PPML's v2 row files, MAC verified on read
(``aes_cbc_pkcs5padding``)
``plain_text``              (none)     no encryption
==========================  =========  ============================================================
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import UsageError

__all__ = [
    "FileFormat",
    "FileInfo",
    "DEFAULT_FORMAT",
    "register_format",
    "get_format",
    "detect_format",
    "available_formats",
]

DEFAULT_FORMAT = "aes_gcm_stream"
SNIFF_SIZE = 8


@dataclass(frozen=True)
class FileInfo:
    """What a file says about itself without any key."""

    format: str
    envelope: tuple[WrappedKey, ...]
    facts: dict[str, object] = field(default_factory=dict)


class FileFormat(ABC):
    """One on-disk format. Subclasses are stateless; options go to :meth:`open_writer`."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    suffix: ClassVar[str] = ""
    encrypted: ClassVar[bool] = True
    splittable: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def sniff(cls, head: bytes, path: str) -> bool:
        """Whether a file starting with ``head`` (first bytes) and named ``path`` is in this format."""

    @abstractmethod
    def describe(self, raw: BinaryIO, *, name: str) -> FileInfo:
        """Header facts and wrapped keys, read without a key."""

    @abstractmethod
    def open_reader(self, raw: BinaryIO, key: DataKey | None, *, name: str) -> BinaryIO:
        """A binary file object yielding authenticated plaintext."""

    @abstractmethod
    def open_writer(self, raw: BinaryIO, key: DataKey | None, envelope: Sequence[WrappedKey], *,
                    name: str, **options: object) -> BinaryIO:
        """A binary file object whose ``close()`` completes the file and whose failed ``with`` block
        leaves a file that no reader accepts."""

    def sidecars(self, envelope: Sequence[WrappedKey]) -> dict[str, bytes]:
        """Extra files (name -> content) that a folder written in this format carries."""
        return {}

    def verify(self, raw: BinaryIO, key: DataKey | None, *, name: str) -> int:
        """Authenticate the whole file; returns the plaintext size."""
        total = 0
        with self.open_reader(raw, key, name=name) as reader:
            while chunk := reader.read(1 << 20):
                total += len(chunk)
        return total


_KNOWN: dict[str, str] = {
    "aes_gcm_stream": "ppml.crypto.gcm_stream_format:GcmStreamFormat",
    "aes/cbc/pkcs5padding": "ppml.crypto.bigdl_cbc:BigdlCbcFormat",
    "plain_text": "ppml.crypto.plain:PlainTextFormat",
}
_ALIASES: dict[str, str] = {"aes_cbc_pkcs5padding": "aes/cbc/pkcs5padding", "plaintext": "plain_text"}
_LOADED: dict[str, FileFormat] = {}


def register_format(cls: type[FileFormat], *, replace: bool = False) -> None:
    """Add a format under ``cls.name`` and its aliases; refuses to overwrite silently."""
    taken = [n for n in (cls.name, *cls.aliases) if n.lower() in _KNOWN.keys() | _LOADED.keys() | _ALIASES.keys()]
    if taken and not replace:
        raise ValueError(f"a format named {taken[0]!r} is already registered; pass replace=True to replace it")
    _LOADED[cls.name.lower()] = cls()
    for alias in cls.aliases:
        _ALIASES[alias.lower()] = cls.name.lower()


def get_format(name: str) -> FileFormat:
    """The format registered as ``name`` (case-insensitive, aliases accepted)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _LOADED:
        target = _KNOWN.get(key)
        if target is None:
            raise UsageError(
                f"unknown crypto mode {name!r}",
                hint="choose one of: " + ", ".join(sorted(set(_KNOWN) | set(_LOADED) | set(_ALIASES))),
            )
        module, _, cls_name = target.partition(":")
        _LOADED[key] = getattr(importlib.import_module(module), cls_name)()
    return _LOADED[key]


def available_formats() -> list[str]:
    return sorted(set(_KNOWN) | set(_LOADED))


def detect_format(head: bytes, path: str) -> FileFormat:
    """The format of a file from its first bytes (and, for BigDL files, its ``.cbc`` suffix).

    Files that no encrypted format claims are ``plain_text``.
    """
    for name in available_formats():
        fmt = get_format(name)
        if fmt.encrypted and fmt.sniff(head, path):
            return fmt
    return get_format("plain_text")
