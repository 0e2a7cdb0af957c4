"""Registers :mod:`ppml.crypto.gcm_stream` as the ``aes_gcm_stream`` format."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import BinaryIO

from ppml.crypto import gcm_stream
from ppml.crypto._streaming import SegmentLayout
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import FileFormat, FileInfo

__all__ = ["GcmStreamFormat"]


class GcmStreamFormat(FileFormat):
    name = "aes_gcm_stream"
    suffix = ".ppml"
    splittable = True

    @classmethod
    def sniff(cls, head: bytes, path: str) -> bool:
        return head[:4] == gcm_stream.MAGIC

    def describe(self, raw: BinaryIO, *, name: str) -> FileInfo:
        raw.seek(0)
        header = gcm_stream.read_header(raw, name=name)
        body_size = raw.seek(0, io.SEEK_END) - header.body_offset
        layout = SegmentLayout(header.segment_size)
        segments = layout.segment_count(body_size)
        return FileInfo(
            self.name,
            header.envelope,
            {
                "format_version": gcm_stream.FORMAT_VERSION,
                "algorithm": "AES256_GCM_HKDF (Tink streaming AEAD)",
                "segment_size": header.segment_size,
                "file_id": header.file_id.hex(),
                "key_commitment": header.commitment.hex(),
                "header_size": header.body_offset,
                "segments": segments,
                "plaintext_size": layout.plaintext_size(body_size) if segments else None,
            },
        )

    def open_reader(self, raw: BinaryIO, key: DataKey | None, *, name: str) -> gcm_stream.DecryptingReader:
        if key is None:
            raise ValueError("aes_gcm_stream files need a data key to read")
        return gcm_stream.DecryptingReader(raw, key, name=name)

    def open_writer(self, raw: BinaryIO, key: DataKey | None, envelope: Sequence[WrappedKey], *,
                    name: str, segment_size: int = gcm_stream.DEFAULT_SEGMENT_SIZE,
                    **options: object) -> gcm_stream.EncryptingWriter:
        if key is None:
            raise ValueError("aes_gcm_stream files need a data key to write")
        if options:
            raise TypeError(f"unknown aes_gcm_stream option(s): {', '.join(sorted(options))}")
        return gcm_stream.EncryptingWriter(raw, key, envelope, segment_size=segment_size)

    def verify(self, raw: BinaryIO, key: DataKey | None, *, name: str) -> int:
        return self.open_reader(raw, key, name=name).verify()
