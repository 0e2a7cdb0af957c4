"""Reading and writing encrypted Parquet as Arrow tables and datasets (pyarrow, pandas, DuckDB).

Reads check the input as every ppml reader does (:func:`ppml.parquet.datasets.checked_parts`), then read
each file through pyarrow with decryption properties bound to it (external key material is found beside
it). Projection reads only the column chunks asked for, so a reader needs only the footer key and the keys
of those columns; filters skip whole row groups by their statistics and then drop rows. A read that
fails says which file, and which column's key could not be had, or that data failed authentication.

Writes encrypt every column (see :class:`~ppml.parquet.settings.ParquetEncryption`), stage their files
and publish them atomically: a single file appears whole or not at all; a folder gets its next data-set
version only when every file is in place.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ppml.errors import AlreadyExistsError, KeyAccessError, PpmlError, UsageError
from ppml.io.storage import Location, locate, move_files, remove_staging, staging_folder
from ppml.keys.keyring import KeyRing
from ppml.keys.settings import KeySettings
from ppml.parquet import footer as pq_footer
from ppml.parquet.datasets import (
    Part,
    checked_parts,
    manifest_key,
    publish,
)
from ppml.parquet.keymaterial import external_material_name
from ppml.parquet.kms import FileKeys, arrow_filesystem, decryption_properties, encryption_properties, explain_failure
from ppml.parquet.settings import ParquetEncryption

__all__ = ["leaf_columns", "write_part", "write_table", "publish_file", "read_table", "dataset", "part_dataset", "column_keys",
           "require_column_keys", "as_expression", "ROW_GROUP_ROWS"]

#: Rows per row group (pyarrow's default maximum): large groups compress well and skip well.
ROW_GROUP_ROWS = 1024 * 1024
_SAVE_MODES = ("error", "overwrite", "append", "ignore")


def leaf_columns(schema: pa.Schema) -> list[str]:
    """The Parquet leaf column paths of ``schema`` (``a``, ``s.x``, ``l.list.element``) that PME keys name."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    return [column.path for column in pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema]


def _batches(data) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    if isinstance(data, pa.Table):
        return data.schema, iter(data.to_batches())
    if isinstance(data, pa.RecordBatchReader):
        return data.schema, iter(data)
    if isinstance(data, pa.RecordBatch):
        return data.schema, iter([data])
    if type(data).__module__.startswith("pandas"):
        table = pa.Table.from_pandas(data, preserve_index=False)
        return table.schema, iter(table.to_batches())
    raise TypeError(f"cannot write a {type(data).__name__} as Parquet: give a pyarrow Table, RecordBatchReader or "
                    "a pandas DataFrame")


def write_part(location: Location, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *, keys: KeySettings,
               encryption: ParquetEncryption | None, compression: str = "snappy",
               row_group_rows: int = ROW_GROUP_ROWS) -> int:
    """Write one Parquet file at ``location`` (encrypted unless ``encryption`` is ``None``); returns its rows.

    Batches are gathered into row groups of ``row_group_rows`` rows, whatever size they come in.
    """
    properties = None
    if encryption is not None:
        if encryption.external_key_material and location.is_local:  # pyarrow writes the key material first
            os.makedirs(os.path.dirname(location.path), exist_ok=True)
        config = encryption.arrow_config(leaf_columns(schema))
        properties = encryption_properties(keys, config, location if encryption.external_key_material else None)
    rows = 0
    with location.open("wb") as sink, pq.ParquetWriter(sink, schema, compression=compression,
                                                       encryption_properties=properties) as writer:
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for batch in batches:
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= row_group_rows:
                writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=row_group_rows)
                rows, pending, pending_rows = rows + pending_rows, [], 0
        if pending or not rows:
            writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=row_group_rows)
            rows += pending_rows
    return rows


def write_table(data, path: str | os.PathLike, *, keys: KeySettings | None = None,
                encryption: ParquetEncryption | None = None, data_key: str | os.PathLike | None = None,
                mode: str = "error", compression: str = "snappy", row_group_rows: int = ROW_GROUP_ROWS) -> str:
    """Write ``data`` as encrypted Parquet: one file (a path ending ``.parquet``) or a data-set folder.

    Returns the URL written. ``mode``: ``error`` (refuse an existing path), ``overwrite``, ``append`` (folders:
    a new part joins the data set) or ``ignore``. A folder's manifest is authenticated with ``data_key`` when
    given, else with a fresh key wrapped by the footer key.
    """
    keys = keys or KeySettings()
    encryption = encryption or ParquetEncryption()
    if mode not in _SAVE_MODES:
        raise UsageError(f"unknown mode {mode!r}", hint="use error, overwrite, append or ignore")
    target = locate(os.fspath(path))
    if target.exists() and (not target.is_dir() or target.files()):
        if mode == "error":
            raise AlreadyExistsError(f"{target.url} already exists", hint="pass mode='overwrite' or mode='append'")
        if mode == "ignore":
            return target.url
    schema, batches = _batches(data)
    single = target.path.endswith(".parquet") and not target.is_dir()
    if single and mode == "append":
        raise UsageError(f"{target.url} is a file; append adds files to a data-set folder",
                         hint="write to a folder (a path not ending in .parquet)")
    root = target.sibling("") if single else target
    staging = staging_folder(root) if not single else target.sibling(f".{target.name}.ppml-partial-{os.urandom(4).hex()}")
    name = target.name if single else f"part-00000-{os.urandom(8).hex()}.parquet"
    try:
        write_part(staging.child(name), schema, batches, keys=keys, encryption=encryption, compression=compression,
                   row_group_rows=row_group_rows)
        if single:
            publish_file(staging.child(name), target)
        else:
            key, envelope = manifest_key(keys, encryption.footer_key, os.fspath(data_key) if data_key else None)
            publish(target, [(staging.child(name), name)], replace=mode != "append", key=key, envelope=envelope,
                    keyring=keys.keyring(), writer="ppml.write_parquet")
    finally:
        remove_staging(staging)
    return target.url


def publish_file(staged: Location, target: Location) -> None:
    """A staged file and its external key material into place (the key material first: the file needs it)."""
    sidecar, old = staged.sibling(external_material_name(staged.name)), target.sibling(external_material_name(target.name))
    pairs = [(sidecar.path, old.path)] if sidecar.exists() else []
    if not pairs and old.exists():  # the replaced file's key material must not outlive it
        old.remove()
    move_files(target, [*pairs, (staged.path, target.path)])


def as_expression(filters) -> ds.Expression | None:
    """A pyarrow expression from ``filters``: an expression already, or pyarrow's DNF list of tuples."""
    if filters is None or isinstance(filters, ds.Expression):
        return filters
    return pq.filters_to_expression(filters)


def part_dataset(part: Part, keys: KeySettings | None, *, schema: pa.Schema | None = None) -> ds.Dataset:
    """One file as a pyarrow dataset, decrypting with ``keys`` (``None``: a plaintext file)."""
    filesystem, path = arrow_filesystem(part.location)
    options = ds.ParquetFragmentScanOptions(
        decryption_properties=decryption_properties(keys, part.location) if keys is not None else None)
    fmt = ds.ParquetFileFormat(default_fragment_scan_options=options)
    return ds.dataset(path, format=fmt, filesystem=filesystem, schema=schema)


def column_keys(part: Part, keys: KeySettings | KeyRing) -> dict[str, tuple[str, str | None]]:
    """Each column of an encrypted file under its own key: ``(master key, why it cannot be had or None)``."""
    handle = FileKeys(part.location, part.tail, keys.keyring() if isinstance(keys, KeySettings) else keys)
    columns, _, _ = pq_footer.column_crypto(handle.footer(), name=part.location.url)
    found: dict[str, tuple[str, str | None]] = {}
    for column in columns:
        if column.protection != "column" or column.key_metadata is None:
            continue
        material = handle.material(column.key_metadata)
        try:
            handle.data_key(material, what=f"column {column.path!r}")
            found[column.path] = (material.master_key_id, None)
        except PpmlError as exc:
            found[column.path] = (material.master_key_id, exc.message)
    return found


def require_column_keys(part: Part, keys: KeySettings | KeyRing, columns: Sequence[str] | None) -> None:
    """Raise :class:`~ppml.errors.KeyAccessError` naming each wanted column whose key cannot be had."""
    wanted = None if columns is None else set(columns)
    refused = {path: found for path, found in column_keys(part, keys).items()
               if found[1] is not None and (wanted is None or path in wanted or path.split(".")[0] in wanted)}
    if refused:
        lines = [f"column {path!r}: master key {master!r}: {why}" for path, (master, why) in sorted(refused.items())]
        readable = sorted(p for p, (_, why) in column_keys(part, keys).items() if why is None)
        raise KeyAccessError(f"{part.location.url}: no key for " + "; ".join(lines),
                             hint="read only the columns whose keys this process may have"
                                  + (f" (e.g. columns={readable})" if readable else ""))


def _diagnose(parts: Sequence[Part], keys: KeySettings, columns: Sequence[str] | None):
    def run() -> PpmlError | None:
        for part in parts:
            try:
                require_column_keys(part, keys, columns)
            except PpmlError as exc:
                return exc
        return None
    return run


def dataset(path: str | os.PathLike, *, keys: KeySettings | None = None, columns: Sequence[str] | None = None,
            min_version: int | None = None, encrypted: bool = True) -> ds.Dataset:
    """The Parquet file or data set at ``path`` as a pyarrow dataset (scanned lazily: DuckDB, Polars ...).

    The input is checked first, and so are the keys: every column of ``columns`` (default: all) must be
    readable with the keys this process can obtain, and the dataset has only those columns.
    """
    keys = keys or KeySettings()
    parts = checked_parts(os.fspath(path), keyring=keys.keyring(), min_version=min_version, encrypted=encrypted)
    if not parts:
        raise UsageError(f"{os.fspath(path)} holds no Parquet file")
    if encrypted:
        for part in parts:
            require_column_keys(part, keys, columns)
    children = [part_dataset(part, keys if encrypted else None) for part in parts]
    schema = _narrowed(children[0].schema, columns)
    return ds.dataset([part_dataset(p, keys if encrypted else None, schema=schema) for p in parts]) \
        if columns is not None else ds.dataset(children)


def _narrowed(schema: pa.Schema, columns: Sequence[str] | None) -> pa.Schema:
    if columns is None:
        return schema
    unknown = [c for c in columns if c not in schema.names]
    if unknown:
        raise UsageError(f"no column {', '.join(map(repr, unknown))}", hint="columns: " + ", ".join(schema.names))
    return pa.schema([schema.field(c) for c in columns])


def read_table(path: str | os.PathLike, *, keys: KeySettings | None = None, columns: Sequence[str] | None = None,
               filters=None, min_version: int | None = None, encrypted: bool = True) -> pa.Table:
    """Read the Parquet file or data set at ``path``: only ``columns`` (default all), only rows matching
    ``filters`` (row groups whose statistics exclude them are not read at all)."""
    keys = keys or KeySettings()
    parts = checked_parts(os.fspath(path), keyring=keys.keyring(), min_version=min_version, encrypted=encrypted)
    if not parts:
        raise UsageError(f"{os.fspath(path)} holds no Parquet file")
    expression = as_expression(filters)
    tables = []
    for part in parts:
        try:
            tables.append(part_dataset(part, keys if encrypted else None).to_table(columns=columns, filter=expression))
        except (OSError, ValueError, pa.ArrowException, PpmlError) as exc:
            if not encrypted or isinstance(exc, UsageError):
                raise
            raise explain_failure(exc, part.location, _diagnose([part], keys, columns)) from None
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

