"""Planning file splits on the driver, and reading one split's lines on an executor.

Each file is cut into the plaintext ranges its format offers (:meth:`~ppml.crypto.formats.FileFormat.split_ranges`):
ranges of about ``split_size`` bytes on segment boundaries for ppml's format, so each task decrypts only its
own segments; byte ranges for plaintext; the whole file for formats that must be read from the start
(BigDL's CBC). A task reads its range under the Hadoop line-reader rule: unless it starts at 0 it skips its
first (possibly partial) line, and it reads past its end to finish its last line. Every line is therefore
read by exactly one task.
"""

from __future__ import annotations

import glob as _glob

from pyspark.sql.datasource import InputPartition

from ppml.crypto.formats import get_format
from ppml.errors import NotFoundError
from ppml.io.azure import AzureStorageSettings
from ppml.io.files import describe
from ppml.io.lines import LineRange
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
    """Splits for all ``files`` in ``crypto_mode``, as their format and headers allow."""
    fmt = get_format(crypto_mode)
    splits: list[FileSplit] = []
    for location in files:
        info = describe(location, fmt)
        splits.extend(FileSplit(location.url, fmt.name, start, end)
                      for start, end in fmt.split_ranges(info, split_size, name=location.url))
    return splits
