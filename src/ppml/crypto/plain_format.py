"""The ``plain_text`` mode: no encryption, for symmetry with BigDL's mode names (no codec of its own)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import BinaryIO

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import FileFormat, FileInfo

__all__ = ["PlainTextFormat"]


class _Unclosing(io.BufferedIOBase):
    """Passes reads/writes through without closing the underlying file on ``close()``."""

    def __init__(self, raw: BinaryIO, *, writing: bool) -> None:
        super().__init__()
        self._raw = raw
        self._writing = writing

    def readable(self) -> bool:
        return not self._writing

    def writable(self) -> bool:
        return self._writing

    def seekable(self) -> bool:
        return not self._writing and self._raw.seekable()

    def read(self, size: int | None = -1) -> bytes:
        return self._raw.read(size)

    read1 = read

    def readinto(self, buffer) -> int:
        return self._raw.readinto(buffer)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def write(self, data) -> int:
        return self._raw.write(data)

    def close(self) -> None:
        if not self.closed and self._writing:
            self._raw.flush()
        super().close()


class PlainTextFormat(FileFormat):
    name = "plain_text"
    encrypted = False
    data_key_kind = None

    @classmethod
    def sniff(cls, head: bytes, path: str) -> bool:
        return True

    def describe(self, raw: BinaryIO, *, name: str) -> FileInfo:
        return FileInfo(self.name, (), {"encrypted": False, "plaintext_size": raw.seek(0, io.SEEK_END)})

    def split_ranges(self, info: FileInfo, split_size: int, *, name: str) -> list[tuple[int, int]]:
        size = int(info.facts["plaintext_size"])
        starts = list(range(0, max(size, 1), split_size))
        return list(zip(starts, starts[1:] + [size]))

    def open_reader(self, raw: BinaryIO, key: DataKey | None, *, name: str) -> BinaryIO:
        raw.seek(0)
        return _Unclosing(raw, writing=False)

    def open_writer(self, raw: BinaryIO, key: DataKey | None, envelope: Sequence[WrappedKey], *,
                    name: str, **options: object) -> BinaryIO:
        if options:
            raise TypeError(f"unknown plain_text option(s): {', '.join(sorted(options))}")
        return _Unclosing(raw, writing=True)
