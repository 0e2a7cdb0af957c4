"""The end of a Parquet file: its footer, what Parquet Modular Encryption (PME) puts there, and its columns.

Layout of a PME file (the Apache Parquet encryption specification)::

    "PARE" | column chunks ... | FileCryptoMetaData | encrypted FileMetaData | uint32 LE length | "PARE"
    "PAR1" | column chunks ... | FileMetaData (plaintext, with the algorithm) | nonce | tag | length | "PAR1"

The first is an *encrypted footer*: ``FileCryptoMetaData`` (plaintext) names the algorithm, the AAD parts
and the footer key's metadata; the footer itself is an AES-GCM module (``uint32 LE length | nonce (12) |
ciphertext | tag (16)``). The second is a *plaintext footer*, signed: the nonce and tag of AES-GCM over the
footer bytes, under the footer key, follow it. Every module's associated data (AAD) is ``aad_prefix ||
aad_file_unique || module type || ordinals``; ``aad_file_unique`` is random per file, so no module can move
between files. The footer's module type is 0 and it has no ordinals.

This module reads and writes those bytes and knows no key management: callers give the footer key.
"""

from __future__ import annotations

import hmac
import io
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ppml.errors import CorruptHeaderError, IntegrityError
from ppml.parquet import thrift
from ppml.parquet.thrift import Struct, ThriftError

__all__ = ["PLAIN_MAGIC", "ENCRYPTED_MAGIC", "ALGORITHMS", "Algorithm", "Tail", "ColumnCrypto", "read_tail",
           "open_footer", "column_crypto", "with_key_metadata"]

PLAIN_MAGIC, ENCRYPTED_MAGIC = b"PAR1", b"PARE"
#: The algorithms of the ``EncryptionAlgorithm`` union, by field id.
ALGORITHMS = {1: "AES_GCM_V1", 2: "AES_GCM_CTR_V1"}
_NONCE, _TAG, _SIGNATURE = 12, 16, 28
_FOOTER_MODULE = b"\x00"
_MAX_FOOTER = 256 * 1024 * 1024
# FileMetaData fields (parquet.thrift) that ppml reads.
_SCHEMA, _ROW_GROUPS, _ALGORITHM, _SIGNING_KEY_METADATA = 2, 4, 8, 9
_NUM_ROWS, _CREATED_BY = 3, 6


@dataclass(frozen=True)
class Algorithm:
    """A file's encryption algorithm and the parts of its modules' AAD."""

    name: str
    aad_prefix: bytes | None
    aad_file_unique: bytes
    supply_aad_prefix: bool

    def file_aad(self, *, name: str) -> bytes:
        if self.aad_prefix is None and self.supply_aad_prefix:
            raise IntegrityError(f"{name}: the file's AAD prefix is not stored in it; the writer keeps it elsewhere",
                                 path=name, hint="ppml reads only files that store their AAD prefix (or have none)")
        return (self.aad_prefix or b"") + self.aad_file_unique


@dataclass(frozen=True)
class Tail:
    """What the end of a Parquet file says without any key.

    ``algorithm`` is ``None`` for a plaintext (unencrypted) file. ``footer_key_metadata`` is the footer key's
    metadata (PME key material, or a reference to it), ``footer`` the bytes of the footer module (encrypted) or
    of the plaintext footer, ``metadata`` the decoded plaintext footer (``None`` when it is encrypted).
    """

    size: int
    footer_offset: int
    encrypted_footer: bool
    algorithm: Algorithm | None
    footer_key_metadata: bytes | None = field(repr=False)
    footer: bytes = field(repr=False)
    metadata: Struct | None = field(default=None, repr=False)
    signature: bytes | None = field(default=None, repr=False)
    crypto: Struct | None = field(default=None, repr=False)

    @property
    def file_id(self) -> str | None:
        """The random ``aad_file_unique`` (hex): bound into every module's authentication, so it names the file."""
        return self.algorithm.aad_file_unique.hex() if self.algorithm else None


def _corrupt(name: str, what: str) -> CorruptHeaderError:
    return CorruptHeaderError(f"{name}: {what}", path=name,
                              hint="the file was damaged, truncated or is not Parquet; restore it from a trusted copy")


def _algorithm(union: Struct | None, *, name: str) -> Algorithm:
    if not isinstance(union, Struct) or len(union.fields) != 1 or union.fields[0].id not in ALGORITHMS:
        raise _corrupt(name, "the Parquet encryption algorithm is missing or unknown")
    member = union.fields[0]
    inner = member.value
    unique = inner.get(2) if isinstance(inner, Struct) else None
    if not isinstance(unique, bytes) or not unique:
        raise _corrupt(name, "the Parquet encryption algorithm has no file-unique AAD")
    prefix = inner.get(1)
    return Algorithm(ALGORITHMS[member.id], prefix if isinstance(prefix, bytes) else None, unique,
                     bool(inner.get(3, False)))


def read_tail(raw: BinaryIO, *, name: str) -> Tail:
    """The tail of the Parquet file open in ``raw``; raises :class:`CorruptHeaderError` for anything else."""
    size = raw.seek(0, io.SEEK_END)
    if size < 12:
        raise _corrupt(name, f"{size} bytes is too short for a Parquet file")
    raw.seek(0)
    head = raw.read(4)
    raw.seek(size - 8)
    trailer = raw.read(8)
    length, magic = struct.unpack("<I", trailer[:4])[0], trailer[4:]
    if head not in (PLAIN_MAGIC, ENCRYPTED_MAGIC):
        raise _corrupt(name, "not a Parquet file (no Parquet magic at its start)")
    if magic != head:
        raise _corrupt(name, "the Parquet footer is missing: the file is truncated or was appended to")
    if not 0 < length <= min(size - 12, _MAX_FOOTER):
        raise _corrupt(name, f"the footer length {length} does not fit the file")
    footer_offset = size - 8 - length
    raw.seek(footer_offset)
    region = raw.read(length)
    try:
        if magic == ENCRYPTED_MAGIC:
            crypto, end = thrift.decode_struct(region)
            key_metadata = crypto.get(2)
            return Tail(size, footer_offset, True, _algorithm(crypto.get(1), name=name),
                        key_metadata if isinstance(key_metadata, bytes) else None, region[end:], crypto=crypto)
        metadata, end = thrift.decode_struct(region)
    except ThriftError as exc:
        raise _corrupt(name, f"the footer does not decode ({exc})") from None
    if metadata.get(_ALGORITHM) is None:
        if end != length:
            raise _corrupt(name, "bytes follow the footer")
        return Tail(size, footer_offset, False, None, None, region, metadata)
    if end + _SIGNATURE != length:
        raise _corrupt(name, "the signature of the plaintext footer is missing")
    key_metadata = metadata.get(_SIGNING_KEY_METADATA)
    return Tail(size, footer_offset, False, _algorithm(metadata.get(_ALGORITHM), name=name),
                key_metadata if isinstance(key_metadata, bytes) else None, region[:end], metadata, region[end:])


def _footer_aad(tail: Tail, name: str) -> bytes:
    assert tail.algorithm is not None
    return tail.algorithm.file_aad(name=name) + _FOOTER_MODULE


def _footer_failed(name: str) -> IntegrityError:
    return IntegrityError(f"{name}: the Parquet footer failed authentication", path=name,
                          hint="the footer was changed, swapped from another file, or the footer key's metadata was "
                               "replaced; restore the file from a trusted copy")


def open_footer(tail: Tail, footer_key: bytes, *, name: str) -> Struct:
    """The file's ``FileMetaData``, authenticated with ``footer_key`` (decrypted, or its signature checked)."""
    if tail.algorithm is None:
        raise ValueError("a plaintext Parquet file has no footer key")
    aad = _footer_aad(tail, name)
    if not tail.encrypted_footer:
        assert tail.signature is not None and tail.metadata is not None
        nonce, tag = tail.signature[:_NONCE], tail.signature[_NONCE:]
        expected = AESGCM(footer_key).encrypt(nonce, tail.footer, aad)[-_TAG:]
        if not hmac.compare_digest(expected, tag):
            raise _footer_failed(name)
        return tail.metadata
    module = tail.footer
    if len(module) < 4 + _NONCE + _TAG or struct.unpack("<I", module[:4])[0] != len(module) - 4:
        raise _corrupt(name, "the encrypted footer's length does not match its module")
    try:
        plaintext = AESGCM(footer_key).decrypt(module[4:4 + _NONCE], module[4 + _NONCE:], aad)
    except InvalidTag:
        raise _footer_failed(name) from None
    try:
        metadata, _ = thrift.decode_struct(plaintext)
    except ThriftError as exc:
        raise _corrupt(name, f"the decrypted footer does not decode ({exc})") from None
    return metadata


@dataclass(frozen=True)
class ColumnCrypto:
    """How one column is protected: ``footer`` key, its own ``column`` key (with its metadata), or ``none``."""

    path: str
    protection: str
    key_metadata: bytes | None = None


def _leaf_paths(schema: list[Struct]) -> list[str]:
    """Dotted paths of the schema's leaves (SchemaElement: 4 name, 5 num_children), depth first."""
    paths: list[str] = []

    def walk(index: int, prefix: list[str]) -> int:
        element = schema[index]
        children = element.get(5) or 0
        here = prefix + [element.get(4, b"").decode("utf-8", "replace")] if index else prefix
        index += 1
        if not children and here:
            paths.append(".".join(here))
        for _ in range(children):
            if index >= len(schema):
                raise ThriftError("the schema's children run past its end")
            index = walk(index, here)
        return index

    if schema:
        walk(0, [])
    return paths


def column_crypto(metadata: Struct, *, name: str) -> tuple[list[ColumnCrypto], int, int]:
    """Each leaf column's protection (from the first row group), the number of rows and of row groups."""
    try:
        paths = _leaf_paths(metadata.items(_SCHEMA))
    except ThriftError as exc:
        raise _corrupt(name, f"the schema does not decode ({exc})") from None
    groups = metadata.items(_ROW_GROUPS)
    chunks = groups[0].items(1) if groups else []
    found = []
    for index, path in enumerate(paths):
        crypto = chunks[index].get(8) if index < len(chunks) else None
        if crypto is None:
            found.append(ColumnCrypto(path, "none" if chunks else "unknown"))
        elif crypto.get(2) is not None:
            found.append(ColumnCrypto(path, "column", crypto.get(2).get(2)))
        else:
            found.append(ColumnCrypto(path, "footer"))
    return found, int(metadata.get(_NUM_ROWS, 0)), len(groups)


def with_key_metadata(tail: Tail, metadata: Struct, footer_key: bytes, footer_key_metadata: bytes,
                      column_key_metadata: dict[bytes, bytes], *, name: str) -> bytes:
    """A new tail for the file: the same footer with key metadata replaced (old -> new for column keys).

    The footer is encrypted (or signed) again under the same footer key with a fresh nonce; the column chunks
    before it are untouched, so the result replaces everything from :attr:`Tail.footer_offset` on.
    """
    assert tail.algorithm is not None
    metadata = _copy(metadata)
    for group in metadata.items(_ROW_GROUPS):
        for chunk in group.items(1):
            crypto = chunk.get(8)
            column_key = crypto.get(2) if crypto is not None else None
            if column_key is not None and column_key.get(2) in column_key_metadata:
                column_key.set(2, thrift.BINARY, column_key_metadata[column_key.get(2)])
    nonce, aad = os.urandom(_NONCE), _footer_aad(tail, name)
    if tail.encrypted_footer:
        assert tail.crypto is not None
        crypto = _copy(tail.crypto)
        crypto.set(2, thrift.BINARY, footer_key_metadata)
        sealed = nonce + AESGCM(footer_key).encrypt(nonce, thrift.encode_struct(metadata), aad)
        region = thrift.encode_struct(crypto) + struct.pack("<I", len(sealed)) + sealed
        magic = ENCRYPTED_MAGIC
    else:
        metadata.set(_SIGNING_KEY_METADATA, thrift.BINARY, footer_key_metadata)
        footer = thrift.encode_struct(metadata)
        region = footer + nonce + AESGCM(footer_key).encrypt(nonce, footer, aad)[-_TAG:]
        magic = PLAIN_MAGIC
    return region + struct.pack("<I", len(region)) + magic


def _copy(item: Struct) -> Struct:
    return thrift.decode_struct(thrift.encode_struct(item))[0]
