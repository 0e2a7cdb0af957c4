"""Planning file splits on the driver, and reading one split's lines on an executor.

A splittable file (``aes_gcm_stream`` or plaintext) is cut into byte ranges of about ``split_size``
plaintext bytes, aligned to segment boundaries so each task decrypts only its own segments. A task reads
its range under the Hadoop line-reader rule: unless it starts at 0 it skips its first (possibly partial)
line, and it reads past its end to finish its last line. Every line is therefore read by exactly one task.
BigDL CBC files are one task each (a CBC stream cannot be entered in the middle).
"""

from __future__ import annotations

import glob as _glob
import io
import sys
from typing import BinaryIO

from pyspark.sql.datasource import InputPartition

from ppml.crypto._streaming import SegmentLayout
from ppml.crypto.formats import get_format
from ppml.errors import IntegrityError, NotFoundError
from ppml.io.azure import AzureStorageSettings
from ppml.io.files import describe
from ppml.io.storage import Location, locate

__all__ = ["FileSplit", "list_files", "plan_splits", "LineRange"]


class FileSplit(InputPartition):
    """One task's share of one file: plaintext bytes ``[start, end)`` under the line rule."""

    def __init__(self, url: str, format: str, start: int, end: int) -> None:  # noqa: A002
        super().__init__((url, format, start, end))
        self.url, self.format, self.start, self.end = url, format, start, end


def list_files(paths: tuple[str, ...], *, azure: AzureStorageSettings | None = None) -> list[Location]:
    """Every data file named by ``paths``: files, folders (recursively) and globs, local or URLs.

    Names starting with ``.`` or ``_`` (``_SUCCESS``, ``.meta``, temporary folders) are skipped.
    ``azure`` are the storage settings for Azure URLs (default: this process's environment).
    """
    found: list[Location] = []
    for path in paths:
        if _glob.has_magic(path):
            roots = locate(path, azure=azure).glob()
            if not roots:
                raise NotFoundError(f"no files match {path}")
        else:
            roots = [locate(path, azure=azure)]
        for root in roots:
            for relative, _ in root.files():
                found.append(root.child(relative) if relative else root)
    return found


def plan_splits(files: list[Location], crypto_mode: str, split_size: int) -> list[FileSplit]:
    """Splits for all ``files``; each file's own header decides its format when it is encrypted."""
    fmt = get_format(crypto_mode)
    splits: list[FileSplit] = []
    for location in files:
        size = location.size()
        if fmt.name == "aes_gcm_stream":
            info = describe(location, fmt)
            layout = SegmentLayout(int(info.facts["segment_size"]))
            if info.facts["plaintext_size"] is None:
                raise IntegrityError(f"{location.url}: the encrypted body is truncated or padded", path=location.url)
            plain_size = int(info.facts["plaintext_size"])
            per_split = max(1, split_size // layout.plain)
            count = layout.segment_of(max(plain_size - 1, 0)) + 1
            starts = [layout.plaintext_start(i) for i in range(0, count, per_split)]
            ends = starts[1:] + [plain_size]
            splits.extend(FileSplit(location.url, fmt.name, s, e) for s, e in zip(starts, ends))
        elif fmt.splittable:
            starts = list(range(0, max(size, 1), split_size))
            ends = starts[1:] + [size]
            splits.extend(FileSplit(location.url, fmt.name, s, e) for s, e in zip(starts, ends))
        else:
            splits.append(FileSplit(location.url, fmt.name, 0, sys.maxsize))
    return splits


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
