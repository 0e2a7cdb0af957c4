"""Encrypted data sets as Arrow tables or pandas DataFrames, for scikit-learn, XGBoost and LightGBM.

Each file is decrypted as it is parsed (pyarrow reads an ordinary seekable file), so no plaintext copy is ever
written; a folder is read file by file (names starting with ``.`` or ``_`` are skipped, as in Spark) and its
tables concatenated. A folder that is a data set is checked against its manifest first, and each file against
its member entry as it is opened.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from ppml.crypto.formats import FileInfo, get_format
from ppml.crypto.manifest import Member
from ppml.errors import NotFoundError, UsageError
from ppml.io import files
from ppml.io.datasets import check_member
from ppml.io.storage import locate
from ppml.keys.settings import KeySettings
from ppml.ml.library import require

__all__ = ["read_arrow", "read_pandas", "DataFile", "data_files", "parse_error", "csv_options", "FORMATS"]

FORMATS = ("csv", "parquet", "json")
PathLike = str | os.PathLike


@dataclass(frozen=True)
class DataFile:
    """One encrypted file to read, and what its data set's manifest records for it (``None``: no manifest)."""

    url: str
    member: Member | None

    def describe(self) -> FileInfo:
        """The file's header facts, refused if it is not the file the manifest records."""
        info = files.describe(locate(self.url))
        if self.member is not None:
            check_member(self.member, get_format(info.format), info, name=self.url)
        return info

    @contextlib.contextmanager
    def open(self, keys: KeySettings) -> Iterator[BinaryIO]:
        """The file's plaintext, refused if it is not the file the manifest records."""
        with files.open_decrypted(self.url, keyring=keys.keyring(), expect=self.member) as plaintext:
            yield plaintext


def data_files(paths: PathLike | Sequence[PathLike], keys: KeySettings) -> list[DataFile]:
    """Every file of each path (a file or a folder, recursively), in name order.

    A folder's data sets are checked against their manifests (a missing, extra or renamed member is an
    ``IntegrityError``); encrypted files outside any data set are read with a warning.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found = []
    for path in paths:
        location = locate(os.fspath(path))
        if not location.exists():
            raise NotFoundError(f"{location.url} does not exist")
        entries = sorted(location.files())
        members = files.checked_members(location, entries, keyring=keys.keyring(), key=None, mode=None) or {}
        found.extend(DataFile(location.child(rel).url if rel else location.url, members.get(rel))
                     for rel, _ in entries)
    if not found:
        raise NotFoundError(f"no data files under {', '.join(os.fspath(p) for p in paths)}")
    return found


def parse_error(name: str, fmt: str, exc: Exception) -> UsageError:
    """A parse failure named without the data: pyarrow's messages end with the offending row."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if message.count(": ") >= 2:
        message = message.rsplit(": ", 1)[0]
    return UsageError(f"cannot read {name} as {fmt}: {message}",
                      hint="check the format, the separator and the header options")


def csv_options(options: dict[str, Any]):
    """pyarrow's read, parse and convert options from ppml's CSV options (consumed from ``options``)."""
    csv = require("pyarrow.csv", "ml")
    header = options.pop("header", True)
    sep = options.pop("sep", ",")
    names = options.pop("column_names", None)
    types = options.pop("column_types", None)
    read = csv.ReadOptions(column_names=names, autogenerate_column_names=not header and names is None,
                           skip_rows=1 if header and names else 0)
    parse = csv.ParseOptions(delimiter=sep)
    convert = csv.ConvertOptions(column_types=types, include_columns=options.pop("columns", None))
    if options:
        raise UsageError(f"unknown CSV options {sorted(options)}",
                         hint="use header, sep, column_names, column_types, columns")
    return read, parse, convert


def read_arrow(paths: PathLike | Sequence[PathLike], *, keys: KeySettings | None = None, format: str = "csv",
               **options: Any):
    """Read encrypted files into one ``pyarrow.Table``.

    Parameters
    ----------
    paths
        A file, a folder of files, or a list of them (local paths or URLs).
    keys
        Which key management services unwrap each file's key (named in its header).
    format
        ``csv`` (default), ``parquet`` (Parquet files encrypted whole by ppml) or ``json`` (JSON lines).
    **options
        CSV: ``header`` (default True), ``sep`` (``,``), ``column_names``, ``column_types`` (``{name: pyarrow
        type}``), ``columns`` (read only these). Parquet: ``columns``.
    """
    pyarrow = require("pyarrow", "ml")
    if format not in FORMATS:
        raise UsageError(f"unknown data format {format!r}", hint=f"choose one of {', '.join(FORMATS)}")
    keys = keys or KeySettings()
    tables = []
    for data_file in data_files(paths, keys):
        name = data_file.url
        with data_file.open(keys) as plaintext:
            try:
                if format == "csv":
                    read, parse, convert = csv_options(dict(options))
                    tables.append(require("pyarrow.csv", "ml").read_csv(plaintext, read_options=read,
                                                                        parse_options=parse, convert_options=convert))
                elif format == "parquet":
                    tables.append(require("pyarrow.parquet", "ml").read_table(plaintext, **options))
                else:
                    tables.append(require("pyarrow.json", "ml").read_json(plaintext, **options))
            except pyarrow.ArrowException as exc:
                raise parse_error(name, format, exc) from None
    return pyarrow.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def read_pandas(paths: PathLike | Sequence[PathLike], *, keys: KeySettings | None = None, format: str = "csv",
                **options: Any):
    """:func:`read_arrow` as a pandas ``DataFrame``."""
    return read_arrow(paths, keys=keys, format=format, **options).to_pandas()
