"""BigDL's ``aes/cbc/pkcs5padding`` format: :mod:`ppml.crypto.bigdl_cbc` behind the :class:`FileFormat` interface.

A CBC stream cannot be entered in the middle, so a file is one range for split planning; its header is not
authenticated, so it cannot be re-wrapped in place (see the codec's module docstring).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import BinaryIO

from ppml.crypto.bigdl_cbc import (
    BIGDL_KMS,
    HEADER_SIZE,
    MAC_SIZE,
    META_FILE_NAME,
    SUFFIX,
    BigdlCbcReader,
    BigdlCbcWriter,
    encode_meta,
    looks_like_header,
    read_header,
)
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import FileFormat, FileInfo
from ppml.errors import UnprotectedDataWarning

__all__ = ["BigdlCbcFormat"]

# One message for every file, so that a folder of them warns once per process, not once per file.
_IV_NOT_AUTHENTICATED = ("BigDL aes/cbc/pkcs5padding files do not authenticate their IV: whoever can write them can "
                         "change the first 16 bytes of their plaintext undetected; re-encrypt data you must trust "
                         "into aes_gcm_stream")


class BigdlCbcFormat(FileFormat):
    """BigDL PPML's ``aes/cbc/pkcs5padding`` row files (v2, BigDL 2.3+); see the module docstring."""

    name = "aes/cbc/pkcs5padding"
    suffix = SUFFIX
    data_key_kind = "bigdl"

    @classmethod
    def sniff(cls, head: bytes, path: str) -> bool:
        return str(path).endswith(SUFFIX) and looks_like_header(head)

    def describe(self, raw: BinaryIO, *, name: str) -> FileInfo:
        raw.seek(0)
        header = read_header(raw, name=name)
        size = raw.seek(0, io.SEEK_END)
        mac = b""
        if size >= HEADER_SIZE + MAC_SIZE:
            raw.seek(size - MAC_SIZE)
            mac = raw.read(MAC_SIZE)
        envelope = (WrappedKey(BIGDL_KMS, "", "", header.encrypted_data_key),) if header.encrypted_data_key else ()
        return FileInfo(
            self.name,
            envelope,
            {
                "algorithm": "AES-128-CBC-PKCS5 + HMAC-SHA256 (BigDL PPML v2)",
                "header_size": HEADER_SIZE,
                "encrypted_data_key_size": len(header.encrypted_data_key),
                "iv": header.iv.hex(),
                "ciphertext_size": max(0, size - HEADER_SIZE - MAC_SIZE),
                "mac_size": MAC_SIZE,
                "mac": mac.hex(),
                "authenticated_header": False,
            },
        )

    def open_reader(self, raw: BinaryIO, key: DataKey | None, *, name: str) -> BigdlCbcReader:
        if key is None:
            raise ValueError("aes/cbc/pkcs5padding files need a data key to read")
        warnings.warn(_IV_NOT_AUTHENTICATED, UnprotectedDataWarning, stacklevel=2)
        return BigdlCbcReader(raw, key, name=name)

    def open_writer(self, raw: BinaryIO, key: DataKey | None, envelope: Sequence[WrappedKey], *,
                    name: str, **options: object) -> BigdlCbcWriter:
        if key is None:
            raise ValueError("aes/cbc/pkcs5padding files need a data key to write")
        if options:
            raise TypeError(f"unknown aes/cbc/pkcs5padding option(s): {', '.join(sorted(options))}")
        if len(envelope) > 1:
            raise ValueError(f"a BigDL file holds one encrypted data key, not {len(envelope)}")
        return BigdlCbcWriter(raw, key, envelope[0].wrapped if envelope else b"")

    def identity(self, info: FileInfo) -> str:
        # The HMAC covers the whole ciphertext (not the header's IV): two files differ in it unless they are copies.
        return str(info.facts["mac"])

    def sidecars(self, envelope: Sequence[WrappedKey]) -> dict[str, bytes]:
        """BigDL's ``.meta`` file, naming the folder's encrypted data key."""
        return {META_FILE_NAME: encode_meta(envelope[0].wrapped.decode("ascii"))} if envelope else {}

    def verify(self, raw: BinaryIO, key: DataKey | None, *, name: str) -> int:
        with self.open_reader(raw, key, name=name) as reader:
            return reader.size
