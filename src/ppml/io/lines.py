"""Reading the lines of one byte range of a text file, so that ranges read on their own cover every line once."""

from __future__ import annotations

import io
from typing import BinaryIO

__all__ = ["LineRange"]


class LineRange(io.RawIOBase):
    """The bytes of the lines a split owns, read from a seekable plaintext stream.

    Lines starting at positions ``<= end`` belong to the split, except the first line when ``start > 0``
    (it belongs to the previous split).
    """

    def __init__(self, source: BinaryIO, start: int, end: int) -> None:
        super().__init__()
        self._source = source
        self._end = end
        source.seek(start)
        if start > 0:
            source.readline()
        self._pos = source.tell()
        self._done = self._pos > end

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._done:
            return 0
        view = memoryview(buffer).cast("B")
        if self._pos < self._end:
            data = self._source.read(min(len(view), self._end - self._pos))
        else:
            # Past the end: finish the line that holds byte `end`.
            data = self._source.read(min(len(view), 64 * 1024))
            cut = data.find(b"\n")
            if cut >= 0:
                data = data[: cut + 1]
                self._done = True
        if not data:
            self._done = True
            return 0
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)
