"""File formats ("crypto modes") behind one small interface, registered by name.

A format turns a raw binary file object into a plaintext reader or writer, given a data key, and answers
what callers need without their knowing which format it is: the facts in its header, how a file can be cut
into ranges that tasks read on their own, which writer options it takes, and how to replace the wrapped
keys in its header. It knows nothing of key management: the wrapped keys it stores are opaque
:class:`~ppml.crypto.envelope.WrappedKey` values that the keys layer produces and unwraps.

Each format is one module pair, the codec (``gcm_stream``, ``bigdl_cbc``) and its format class
(``gcm_stream_format``, ``bigdl_cbc_format``; ``plain_format`` has no codec). Built-in formats:

==========================  =========  ============================================================
name (aliases)              suffix     what it is
==========================  =========  ============================================================
``aes_gcm_stream``          ``.ppml``  ppml's authenticated, seekable, Tink-compatible stream (default)
``aes/cbc/pkcs5padding``    ``.cbc``   BigDL PPML's v2 row files, MAC verified on read
(``aes_cbc_pkcs5padding``)
``plain_text``              (none)     no encryption
(``plaintext``)
==========================  =========  ============================================================
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import ConfigError, UsageError
from ppml.registry import Registry

__all__ = [
    "FileFormat",
    "FileInfo",
    "DEFAULT_FORMAT",
    "PLAINTEXT",
    "WHOLE_FILE",
    "register_format",
    "get_format",
    "detect_format",
    "available_formats",
    "SNIFF_SIZE",
]

DEFAULT_FORMAT = "aes_gcm_stream"
PLAINTEXT = "plain_text"
SNIFF_SIZE = 8
#: The end of a range that reaches the end of the file, whatever its size.
WHOLE_FILE = sys.maxsize


@dataclass(frozen=True)
class FileInfo:
    """What a file says about itself without any key."""

    format: str
    envelope: tuple[WrappedKey, ...]
    facts: dict[str, object] = field(default_factory=dict)


class FileFormat(ABC):
    """One on-disk format. Instances are stateless; options go to :meth:`open_writer`.

    Subclasses set :attr:`name` and implement :meth:`sniff`, :meth:`describe`, :meth:`open_reader` and
    :meth:`open_writer`; the other methods have defaults that suit a format without those abilities.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    suffix: ClassVar[str] = ""
    encrypted: ClassVar[bool] = True
    #: The kind of data key the format encrypts with (``"ppml"``: 32 random bytes; ``"bigdl"``: BigDL's
    #: data-key strings), matched against the kind a key management service wraps; ``None`` for plaintext.
    data_key_kind: ClassVar[str | None] = "ppml"
    #: Named writer presets accepted by :meth:`writer_options` as ``segment=``.
    segment_presets: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`replace_envelope` and :meth:`rewrapped_header` can re-wrap a file's data key.
    rewrappable: ClassVar[bool] = False

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
        leaves a file that no reader accepts. ``options`` come from :meth:`writer_options` or
        :meth:`layout_options`."""

    def writer_options(self, *, segment: str | None = None) -> dict[str, object]:
        """Keyword arguments for :meth:`open_writer` from user-level settings (``None``: the default).

        A setting the format does not have is a :class:`~ppml.errors.UsageError`.
        """
        if segment is not None:
            raise UsageError(f"the {self.name} format has no segment presets (got {segment!r})",
                             hint="drop the segment setting for this format")
        return {}

    def layout_options(self, info: FileInfo) -> dict[str, object]:
        """Keyword arguments for :meth:`open_writer` that lay a new file out like the one ``info`` describes."""
        return {}

    def split_ranges(self, info: FileInfo, split_size: int, *, name: str) -> list[tuple[int, int]]:
        """Plaintext byte ranges ``[start, end)`` of about ``split_size`` bytes that can be read on their own.

        The default is one range over the whole file (``end`` is :data:`WHOLE_FILE`), for formats that must
        be read from the start.
        """
        return [(0, WHOLE_FILE)]

    def replace_envelope(self, raw: BinaryIO, envelope: Sequence[WrappedKey], *, name: str) -> bool:
        """Overwrite the wrapped keys of the file open in ``raw`` (``r+b``) in place.

        Returns ``False``, changing nothing, when they do not fit the header; the caller then writes
        :meth:`rewrapped_header` followed by the unchanged body.
        """
        raise self._not_rewrappable(name)

    def rewrapped_header(self, raw: BinaryIO, envelope: Sequence[WrappedKey], *, name: str) -> tuple[bytes, int]:
        """A new header for the file open in ``raw``, carrying ``envelope``, and the offset of its body."""
        raise self._not_rewrappable(name)

    def _not_rewrappable(self, name: str) -> ConfigError:
        return ConfigError(f"{name}: {self.name} headers cannot be re-wrapped",
                           hint="re-encrypt such files with 'ppml rekey' or copy them into an authenticated format")

    def identity(self, info: FileInfo) -> str | None:
        """What tells this file from every other one (a random file id, or a MAC over the whole ciphertext), as
        recorded in data-set manifests; ``None`` for formats that have none (plaintext)."""
        return None

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


_FORMATS: Registry[FileFormat] = Registry(
    "crypto mode",
    known={
        "aes_gcm_stream": "ppml.crypto.gcm_stream_format:GcmStreamFormat",
        "aes/cbc/pkcs5padding": "ppml.crypto.bigdl_cbc_format:BigdlCbcFormat",
        "plain_text": "ppml.crypto.plain_format:PlainTextFormat",
    },
    aliases={"aes_cbc_pkcs5padding": "aes/cbc/pkcs5padding", "plaintext": "plain_text"},
)
_INSTANCES: dict[type[FileFormat], FileFormat] = {}


def register_format(cls: type[FileFormat], *, replace: bool = False) -> None:
    """Add a format under ``cls.name`` and its aliases; refuses to overwrite silently."""
    _FORMATS.register(cls, replace=replace)


def get_format(name: str) -> FileFormat:
    """The format registered as ``name`` (case-insensitive, aliases accepted)."""
    cls = _FORMATS.get(name)
    instance = _INSTANCES.get(cls)
    if instance is None:
        instance = _INSTANCES[cls] = cls()
    return instance


def available_formats() -> list[str]:
    return _FORMATS.names()


def detect_format(head: bytes, path: str) -> FileFormat:
    """The format of a file from its first bytes (and, for BigDL files, its ``.cbc`` suffix).

    Files that no encrypted format claims are ``plain_text``.
    """
    for name in available_formats():
        fmt = get_format(name)
        if fmt.encrypted and fmt.sniff(head, path):
            return fmt
    return get_format(PLAINTEXT)
