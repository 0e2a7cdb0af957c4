"""The ``aes_gcm_stream`` format: :mod:`ppml.crypto.gcm_stream` behind the :class:`FileFormat` interface."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import BinaryIO

from ppml.crypto import gcm_stream
from ppml.crypto._streaming import SegmentLayout
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import FileFormat, FileInfo
from ppml.errors import IntegrityError, UsageError

__all__ = ["GcmStreamFormat"]


class GcmStreamFormat(FileFormat):
    name = "aes_gcm_stream"
    suffix = ".ppml"
    segment_presets = tuple(gcm_stream.SEGMENT_PRESETS)
    rewrappable = True

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

    def writer_options(self, *, segment: str | None = None) -> dict[str, object]:
        if segment is None:
            return {}
        size = gcm_stream.SEGMENT_PRESETS.get(segment)
        if size is None:
            raise UsageError(f"unknown segment preset {segment!r}",
                             hint="choose one of: " + ", ".join(gcm_stream.SEGMENT_PRESETS))
        return {"segment_size": size}

    def identity(self, info: FileInfo) -> str:
        return str(info.facts["file_id"])  # random per file and bound into every segment's authentication

    def layout_options(self, info: FileInfo) -> dict[str, object]:
        return {"segment_size": int(info.facts["segment_size"])}

    def split_ranges(self, info: FileInfo, split_size: int, *, name: str) -> list[tuple[int, int]]:
        """Ranges that start on segment boundaries, so a task decrypts only its own segments."""
        plain_size = info.facts["plaintext_size"]
        if plain_size is None:
            raise IntegrityError(f"{name}: the encrypted body is truncated or padded", path=name)
        layout = SegmentLayout(int(info.facts["segment_size"]))
        per_split = max(1, split_size // layout.plain)
        count = layout.segment_of(max(int(plain_size) - 1, 0)) + 1
        starts = [layout.plaintext_start(i) for i in range(0, count, per_split)]
        return list(zip(starts, starts[1:] + [int(plain_size)]))

    def replace_envelope(self, raw: BinaryIO, envelope: Sequence[WrappedKey], *, name: str) -> bool:
        raw.seek(0)
        header = gcm_stream.read_header(raw, name=name)
        return gcm_stream.replace_envelope(raw, header, envelope)

    def rewrapped_header(self, raw: BinaryIO, envelope: Sequence[WrappedKey], *, name: str) -> tuple[bytes, int]:
        raw.seek(0)
        header = gcm_stream.read_header(raw, name=name)
        return gcm_stream.encode_header(header.authenticated, envelope), header.body_offset

    def verify(self, raw: BinaryIO, key: DataKey | None, *, name: str) -> int:
        return self.open_reader(raw, key, name=name).verify()
