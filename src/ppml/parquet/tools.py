"""What ppml's tools do to encrypted Parquet: describe a file (which key protects each column), verify
and decrypt one file, and convert CSV, JSON lines or Parquet into encrypted Parquet.

``ppml verify`` and ``ppml decrypt`` (:mod:`ppml.io.files`) walk files and folders, check data sets
against their manifests and stage outputs for every format; for a PME file they call :func:`verify_file`
and :func:`decrypt_file` (through :class:`~ppml.parquet.format.ParquetFormat`). A conversion of a folder
writes a data set whose manifest records every file; outputs appear whole or not at all.
"""

from __future__ import annotations

import posixpath
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from ppml.crypto.formats import get_format
from ppml.crypto.manifest import Member
from ppml.errors import KeyAccessError, PpmlError, PpmlInsecureWarning, UsageError
from ppml.io.batch import Progress, Report, run_tasks
from ppml.io.datasets import check_member, dataset_facts, write_version
from ppml.io.storage import Location, locate, staged_output
from ppml.keys.keyring import KeyRing
from ppml.keys.settings import KeySettings
from ppml.parquet import footer as pq_footer
from ppml.parquet.datasets import Part, manifest_key, member_of, part_info, read_file_tail
from ppml.parquet.format import PARQUET_FORMAT
from ppml.parquet.keymaterial import decode_envelope
from ppml.parquet.kms import FileKeys, decryption_properties, explain_failure
from ppml.parquet.settings import ParquetEncryption
from ppml.parquet.tables import column_keys, leaf_columns, require_column_keys, write_part

__all__ = ["ColumnFacts", "describe", "verify_file", "decrypt_file", "encrypt", "input_format_of", "INPUT_FORMATS",
           "PARQUET_SUFFIX"]

INPUT_FORMATS = ("csv", "json", PARQUET_FORMAT)
PARQUET_SUFFIX = ".parquet"
_BATCH_ROWS = 64 * 1024
_CTR_VERIFY = ("{url}: AES_GCM_CTR_V1 authenticates page headers and the footer, not page contents: its pages "
               "were decrypted but a changed page would not be detected")
_UNENCRYPTED = ("{url}: column(s) {columns} are not encrypted (written by another tool): nobody authenticates their "
                "pages")


@dataclass(frozen=True)
class ColumnFacts:
    """How one column is protected, as ``inspect`` shows it (no secret: key names and references only)."""

    column: str
    protection: str          # "column key", "footer key", "none"
    master_key: str | None
    wrapped_by: tuple[str, ...] = ()
    readable: bool | None = None


def describe(location: Location, keys: KeySettings | None = None) -> dict[str, object]:
    """What a Parquet file says about its protection; with ``keys``, also each column's key (when this
    process can open the footer) and whether this process can obtain it."""
    tail = read_file_tail(location)
    info = part_info(location, tail)
    facts: dict[str, object] = {"path": location.url, "format": info.format, **info.facts,
                                "footer_key_wrapped_by": [w.reference for w in info.envelope]}
    if keys is None:
        if tail.encrypted_footer:
            facts["columns"] = None  # in the encrypted footer: give keys to list them
        else:
            facts["columns"] = [asdict(c) for c in _columns(location, tail, tail.metadata, None)]
        return facts
    handle = FileKeys(location, tail, keys.keyring())
    try:
        metadata = handle.footer()
    except PpmlError as exc:
        facts["columns"] = None
        facts["footer_error"] = exc.message
        return facts
    facts["columns"] = [asdict(c) for c in _columns(location, tail, metadata, keys)]
    _, facts["rows"], facts["row_groups"] = pq_footer.column_crypto(metadata, name=location.url)
    return facts


def _columns(location: Location, tail, metadata, keys: KeySettings | None) -> list[ColumnFacts]:
    columns, _, _ = pq_footer.column_crypto(metadata, name=location.url)
    handle = FileKeys(location, tail, keys.keyring() if keys is not None else None)  # type: ignore[arg-type]
    readable = column_keys(Part(location, tail, tail.size), keys) if keys is not None else {}
    found = []
    for column in columns:
        if column.protection == "column" and column.key_metadata is not None:
            material = handle.material(column.key_metadata)
            try:
                wrapped = tuple(w.reference for w in decode_envelope(material.kms_wrapped, name=location.url))
            except PpmlError:
                wrapped = ()
            reason = readable.get(column.path, (None, None))[1]
            found.append(ColumnFacts(column.path, "column key", material.master_key_id, wrapped,
                                     None if keys is None else reason is None))
        elif column.protection == "footer":
            found.append(ColumnFacts(column.path, "footer key", None))
        else:
            found.append(ColumnFacts(column.path, "none" if column.protection == "none" else "unknown", None))
    return found


def verify_file(location: Location, *, keyring: KeyRing) -> int:
    """Authenticate one PME file: its footer and every page of every column (each GCM tag checked).

    Returns the bytes verified (the file's size). Raises :class:`~ppml.errors.IntegrityError` naming the
    file for damage, :class:`~ppml.errors.KeyAccessError` naming the column whose key cannot be had.
    Columns left unencrypted by another writer, and AES_GCM_CTR_V1 pages, are authenticated by nobody: a
    warning says so.
    """
    tail = read_file_tail(location)
    part_info(location, tail)  # a plaintext file raises
    part = Part(location, tail, tail.size)
    handle = FileKeys(location, tail, keyring)
    metadata = handle.footer()
    columns, _, _ = pq_footer.column_crypto(metadata, name=location.url)
    for column in columns:  # each column key's material authenticated as the footer key's was
        if column.protection == "column" and column.key_metadata is not None:
            try:
                handle.data_key(handle.material(column.key_metadata), what=f"column {column.path!r}")
            except KeyAccessError:
                pass  # a key this process may not have: the read below names the column
    unprotected = [c.path for c in columns if c.protection == "none"]
    if unprotected:
        warnings.warn(_UNENCRYPTED.format(url=location.url, columns=", ".join(unprotected)), PpmlInsecureWarning,
                      stacklevel=3)
    if tail.algorithm is not None and tail.algorithm.name == "AES_GCM_CTR_V1":
        warnings.warn(_CTR_VERIFY.format(url=location.url), PpmlInsecureWarning, stacklevel=3)
    try:
        with location.open("rb") as raw:
            reader = pq.ParquetFile(raw, decryption_properties=decryption_properties(keyring, location))
            for _ in reader.iter_batches(batch_size=_BATCH_ROWS):
                pass
    except (OSError, ValueError, pa.ArrowException, PpmlError) as exc:
        raise explain_failure(exc, location, lambda: _missing_key(part, keyring)) from None
    return tail.size


def _missing_key(part: Part, keyring: KeyRing) -> PpmlError | None:
    try:
        require_column_keys(part, keyring, None)
    except PpmlError as found:
        return found
    return None


def _output_name(relative: str) -> str:
    base, extension = posixpath.splitext(relative)
    return (base if extension else relative) + PARQUET_SUFFIX


def decrypt_file(location: Location, out: Location, *, keyring: KeyRing, expect: Member | None = None) -> int:
    """One PME file into plaintext Parquet at ``out``, row group for row group, every page authenticated as
    it is read; returns the bytes read. ``expect``: the data-set member it must be."""
    tail = read_file_tail(location)
    info = part_info(location, tail)
    if expect is not None:
        check_member(expect, get_format(PARQUET_FORMAT), info, name=location.url)
    with location.open("rb") as raw:
        reader = pq.ParquetFile(raw, decryption_properties=decryption_properties(keyring, location))
        try:
            write_part(out, reader.schema_arrow, _groups(reader), keys=None, encryption=None)
        except (OSError, ValueError, pa.ArrowException, PpmlError) as exc:
            raise explain_failure(exc, location, lambda: _missing_key(Part(location, tail, tail.size), keyring)) \
                from None
    return tail.size


def _groups(reader: pq.ParquetFile) -> Iterator[pa.RecordBatch]:
    for index in range(reader.num_row_groups):
        yield from reader.read_row_group(index).to_batches()


def _read_input(raw, input_format: str, *, delimiter: str, header: bool,
                schema: pa.Schema | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    if input_format == PARQUET_FORMAT:
        reader = pq.ParquetFile(raw)
        return reader.schema_arrow, reader.iter_batches(batch_size=_BATCH_ROWS)
    if input_format == "json":
        options = pa_json.ParseOptions(explicit_schema=schema) if schema is not None else pa_json.ParseOptions()
        table = pa_json.read_json(raw, parse_options=options)
        return table.schema, iter(table.to_batches())
    read = pa_csv.ReadOptions(autogenerate_column_names=not header, block_size=8 << 20)
    convert = pa_csv.ConvertOptions(column_types=schema) if schema is not None else pa_csv.ConvertOptions()
    stream = pa_csv.open_csv(raw, read_options=read, parse_options=pa_csv.ParseOptions(delimiter=delimiter),
                             convert_options=convert)
    return stream.schema, iter(stream)


def input_format_of(relative: str, given: str | None) -> str:
    """The input format: ``given``, else told by the file name's extension."""
    if given is not None:
        if given not in INPUT_FORMATS:
            raise UsageError(f"unknown input format {given!r}", hint="choose " + ", ".join(INPUT_FORMATS))
        return given
    extension = posixpath.splitext(relative)[1].lower().lstrip(".")
    found = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "ndjson": "json",
             PARQUET_FORMAT: PARQUET_FORMAT}.get(extension)
    if found is None:
        raise UsageError(f"cannot tell the format of {relative or 'the input'} from its name",
                         hint="pass --input-format csv, json or parquet")
    return found


def encrypt(src: str, dst: str, *, keys: KeySettings, encryption: ParquetEncryption, input_format: str | None = None,
            delimiter: str = ",", header: bool = True, schema: pa.Schema | None = None, data_key: str | None = None,
            force: bool = False, workers: int | None = None, progress: Progress | None = None,
            only: Sequence[str] | None = None) -> Report:
    """Convert CSV, JSON lines or Parquet files into encrypted Parquet, every column encrypted.

    A folder becomes a data set of ``<name>.parquet`` files (one per input file) with a manifest; a file
    becomes one file. In a folder each file takes the column keys of the columns it has (tables of one
    schema share their keys); a column key naming a column that no file has is an error. ``only`` keeps the
    files of a folder at these relative paths.
    """
    started = time.perf_counter()
    source, target = locate(src), locate(dst)
    entries = [(r, s) for r, s in source.files() if only is None or r in only]
    report = Report("encrypt", PARQUET_FORMAT)
    with staged_output(target, force=force) as staging:
        def task(relative: str, size: int) -> Callable[[], dict[str, object]]:
            def run() -> dict[str, object]:
                location = source.child(relative) if relative else source
                fmt = input_format_of(relative or source.name, input_format)
                out_relative = _output_name(relative) if relative else ""
                out = staging.child(out_relative) if out_relative else staging
                with location.open("rb") as raw:
                    schema_in, batches = _read_input(raw, fmt, delimiter=delimiter, header=header, schema=schema)
                    columns = leaf_columns(schema_in)
                    named.update(c for c in columns for names in encryption.column_keys.values() for n in names
                                 if c == n or c.startswith(n + "."))
                    mine = encryption.restricted_to(columns) if source.is_dir() else encryption
                    rows = write_part(out, schema_in, batches, keys=keys, encryption=mine)
                if progress:
                    progress(size)
                return {"source": location.url, "target": (target.child(out_relative) if out_relative else target).url,
                        "rows": rows, "bytes": size, "relative": out_relative}
            return run

        named: set[str] = set()
        report.details = run_tasks([task(r, s) for r, s in entries], workers)
        for key, names in encryption.column_keys.items():
            for name in names:
                if not any(c == name or c.startswith(name + ".") for c in named):
                    raise UsageError(f"column key {key!r} names column {name!r}, which no input has",
                                     hint="check the column names (ppml parquet inspect shows a file's columns)")
        if source.is_dir():
            key, envelope = manifest_key(keys, encryption.footer_key, data_key)
            members = [member_of(staging, str(d.pop("relative"))) for d in report.details]
            report.dataset = dataset_facts(write_version(staging, members, key=key, envelope=envelope,
                                                         writer="ppml parquet encrypt", previous=None))
        else:
            for detail in report.details:
                detail.pop("relative")
    return report.finish(started)
