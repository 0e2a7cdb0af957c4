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
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pyspark.sql.datasource import InputPartition

from ppml.crypto.formats import FileFormat, FileInfo, get_format
from ppml.errors import IntegrityError, NotFoundError
from ppml.io.azure import AzureStorageSettings
from ppml.io.datasets import check_member, check_read
from ppml.io.files import describe
from ppml.io.lines import LineRange
from ppml.io.storage import Location, locate
from ppml.keys.keyring import KeyRing

__all__ = ["FileSplit", "LineRange", "Survey", "list_files", "plan_splits", "survey"]

_LISTING_ATTEMPTS = 4


class FileSplit(InputPartition):
    """One task's share of one file: plaintext bytes ``[start, end)`` under the line rule, and which file it
    is exactly (its identity and stored size when planned), so a task never reads another file by that name."""

    def __init__(self, url: str, format: str, start: int, end: int, file_id: str | None,  # noqa: A002
                 size: int) -> None:
        super().__init__((url, format, start, end, file_id, size))
        self.url, self.format, self.start, self.end = url, format, start, end
        self.file_id, self.size = file_id, size

    def check(self, fmt: FileFormat, info: FileInfo, size: int) -> None:
        """Raise unless the file a task opened is the one planned (not replaced since)."""
        if fmt.identity(info) != self.file_id or size != self.size:
            raise IntegrityError(f"{self.url}: not the file this job planned to read (replaced or changed while the "
                                 "job ran)", path=self.url, hint="run the job again when no one writes to its input")


def list_files(paths: tuple[str, ...], *, azure: AzureStorageSettings | None = None) -> list[Location]:
    """Every data file named by ``paths``: files, folders (recursively) and globs, local or URLs.

    Names starting with ``.`` or ``_`` (``_SUCCESS``, ``.meta``, temporary folders) are skipped.
    ``azure`` are the storage settings for Azure URLs (default: this process's environment).
    """
    return [location for location, _ in _listing(paths, azure)]


@dataclass(frozen=True)
class Survey:
    """What a read will find: each data file's stored size, the data-set versions it reads (URL -> version),
    and the encrypted files no manifest vouches for."""

    sizes: list[int]
    versions: dict[str, int]
    unprotected: list[str]


def survey(paths: tuple[str, ...], crypto_mode: str, *, azure: AzureStorageSettings | None = None,
           keyring: KeyRing | None = None) -> Survey:
    """The data files named by ``paths``, checked against their data sets' manifests when ``crypto_mode``
    encrypts (the versions found are what a read defined now is held to)."""
    listing, plan = _checked_listing(paths, get_format(crypto_mode), azure, keyring, None)
    sizes = [int(info.get("size") or 0) for _, info in listing]
    if plan is None:
        return Survey(sizes, {}, [])
    return Survey(sizes, {url: v.manifest.version for url, v in plan.versions.items()}, plan.unprotected)


def _checked_listing(paths: tuple[str, ...], fmt: FileFormat, azure: AzureStorageSettings | None,
                     keyring: KeyRing | None, expected: Mapping[str, int] | None):
    """The files ``paths`` name, and (encrypted formats) their check against their data sets' manifests.

    A write commits by putting its files in place and then recording the new version, so a listing taken in
    between does not match yet: it is taken again, a few times, before the difference counts.
    """
    for attempt in range(_LISTING_ATTEMPTS):
        listing = _listing(paths, azure)
        if not fmt.encrypted:
            return listing, None
        specs = [(locate(p, azure=azure), _glob.has_magic(p)) for p in paths]
        found = {location.url: (location, int(info.get("size") or 0)) for location, info in listing}
        try:
            return listing, check_read(specs, found, keyring, expected=expected)
        except IntegrityError:
            if attempt == _LISTING_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def plan_splits(paths: tuple[str, ...], crypto_mode: str, split_size: int, *,
                azure: AzureStorageSettings | None = None, keyring: KeyRing | None = None,
                expected: Mapping[str, int] | None = None) -> list[FileSplit]:
    """Splits for every data file named by ``paths`` in ``crypto_mode``, as their format and headers allow.

    Encrypted files are first checked against their data sets' manifests (unwrapped through ``keyring``;
    ``expected``: data-set URL -> the version the read was defined on), and each header against its member.
    """
    fmt = get_format(crypto_mode)
    listing, plan = _checked_listing(paths, fmt, azure, keyring, expected)
    members = plan.members if plan is not None else {}
    unprotected = set(plan.unprotected) if plan is not None else set()
    splits: list[FileSplit] = []
    for location, info in listing:
        if plan is not None and location.url not in members and location.url not in unprotected:
            continue  # added by a version later than the one this read is held to
        header = _header(location, _version(info), fmt.name)
        size = int(info.get("size") or 0)
        if location.url in members:
            check_member(members[location.url], fmt, header, name=location.url)
        splits.extend(FileSplit(location.url, fmt.name, start, end, fmt.identity(header), size)
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
