"""Planning file splits on the driver, and reading one split's lines on an executor.

Each file is cut into the plaintext ranges its format offers (:meth:`~ppml.crypto.formats.FileFormat.split_ranges`):
ranges of about ``split_size`` bytes on segment boundaries for ppml's format, so each task decrypts only its
own segments; byte ranges for plaintext; the whole file for formats that must be read from the start
(BigDL's CBC). A task reads its range under the Hadoop line-reader rule: unless it starts at 0 it skips its
first (possibly partial) line, and it reads past its end to finish its last line. Every line is therefore
read by exactly one task.
"""

from __future__ import annotations

import functools
import glob as _glob
import io
from typing import BinaryIO

from pyspark.sql.datasource import InputPartition

from ppml.crypto.formats import FileInfo, get_format
from ppml.errors import NotFoundError
from ppml.io.azure import AzureStorageSettings
from ppml.io.files import describe
from ppml.io.storage import Location, locate

__all__ = ["FileSplit", "LineRange", "list_files", "plan_splits", "stored_sizes"]


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
    return [location for location, _ in _listing(paths, azure)]


def stored_sizes(paths: tuple[str, ...], *, azure: AzureStorageSettings | None = None) -> list[int]:
    """The stored size of each data file named by ``paths`` (as :func:`list_files` finds them)."""
    return [int(info.get("size") or 0) for _, info in _listing(paths, azure)]


def plan_splits(paths: tuple[str, ...], crypto_mode: str, split_size: int, *,
                azure: AzureStorageSettings | None = None) -> list[FileSplit]:
    """Splits for every data file named by ``paths`` in ``crypto_mode``, as their format and headers allow."""
    fmt = get_format(crypto_mode)
    splits: list[FileSplit] = []
    for location, info in _listing(paths, azure):
        header = _header(location, _version(info), fmt.name)
        splits.extend(FileSplit(location.url, fmt.name, start, end)
                      for start, end in fmt.split_ranges(header, split_size, name=location.url))
    return splits


def _listing(paths: tuple[str, ...], azure: AzureStorageSettings | None) -> list[tuple[Location, dict]]:
    found: list[tuple[Location, dict]] = []
    for path in paths:
        if _glob.has_magic(path):
            roots = locate(path, azure=azure).glob()
            if not roots:
                raise NotFoundError(f"no files match {path}")
        else:
            roots = [locate(path, azure=azure)]
        for root in roots:
            found.extend((root.child(relative) if relative else root, info) for relative, info in root.listing())
    return found


def _version(info: dict) -> tuple[str, ...]:
    """What tells one version of a file from another, in the facts any fsspec store lists."""
    return tuple(str(info.get(fact)) for fact in ("size", "mtime", "ino", "etag", "last_modified"))


@functools.lru_cache(maxsize=4096)
def _header(location: Location, version: tuple[str, ...], format_name: str) -> FileInfo:
    """The header of one version of a file, read once per planning process.

    Spark plans every scan of a Python data source in a reused Python worker, so a table read by many
    queries would otherwise have its headers opened (a request each on object stores) for every query.
    ``version`` is part of the key: a file rewritten since (another size, modification time, inode or
    ETag) is read again.
    """
    return describe(location, get_format(format_name))


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
