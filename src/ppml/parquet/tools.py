"""What the command line does to encrypted Parquet: inspect, verify, decrypt to plain Parquet, and convert
CSV, JSON lines or Parquet into encrypted Parquet. Files and folders, local paths and URLs.

Folders are data sets: a conversion writes one whose manifest records every file; ``verify`` and
``decrypt`` check a folder against its manifest before they read it (as ``ppml verify`` and ``ppml decrypt``
do for every format). Outputs are staged and appear whole or not at all.
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

from ppml.errors import PpmlError, PpmlInsecureWarning, UsageError
from ppml.io.batch import Progress, Report, run_tasks
from ppml.io.datasets import dataset_facts, latest_version, write_version
from ppml.io.storage import Location, locate, staged_output
from ppml.keys.settings import KeySettings
from ppml.parquet import footer as pq_footer
from ppml.parquet.datasets import Part, checked_parts, manifest_key, member_of, part_info, read_file_tail
from ppml.parquet.format import PARQUET_FORMAT
from ppml.parquet.keymaterial import decode_envelope
from ppml.parquet.kms import FileKeys, decryption_properties, explain_failure
from ppml.parquet.settings import ParquetEncryption
from ppml.parquet.tables import column_keys, leaf_columns, require_column_keys, write_part

__all__ = ["ColumnFacts", "describe", "verify", "decrypt", "encrypt", "input_format_of", "INPUT_FORMATS",
           "PARQUET_SUFFIX"]

INPUT_FORMATS = ("csv", "json", PARQUET_FORMAT)
PARQUET_SUFFIX = ".parquet"
_BATCH_ROWS = 64 * 1024
_CTR_VERIFY = ("{url}: AES_GCM_CTR_V1 authenticates page headers and the footer, not page contents: its pages "
               "were decrypted but a changed page would not be detected")


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


def verify(path: str, *, keys: KeySettings, workers: int | None = None, progress: Progress | None = None,
           min_version: int | None = None) -> Report:
    """Authenticate a Parquet data set's manifest, and each file's footer and every page of every column.

    Like :func:`ppml.io.files.verify`, nothing raises for a bad file: :attr:`Report.details` has the data
    set's entry first, then one per file (``ok`` or its error).
    """
    started = time.perf_counter()
    report = Report("verify", PARQUET_FORMAT)
    try:
        parts = checked_parts(path, keyring=keys.keyring(), min_version=min_version)
        details: list[dict[str, object]] = []
    except PpmlError as exc:
        location = locate(path)
        details = [{"path": location.url, "kind": "data set", "ok": False, "bytes": 0, "error": exc.to_dict()}]
        parts = [_unchecked(location.child(r) if r else location) for r, _ in location.files()]

    def task(part) -> Callable[[], dict[str, object]]:
        def run() -> dict[str, object]:
            try:
                if isinstance(part, dict):
                    return part
                rows = _read_everything(part, keys)
                result = {"path": part.location.url, "format": PARQUET_FORMAT, "ok": True, "bytes": part.size, "rows": rows,
                          "algorithm": part.tail.algorithm.name}
                unprotected = _unencrypted_columns(part, keys)
                if unprotected:
                    result["unencrypted_columns"] = unprotected
            except PpmlError as exc:
                result = {"path": part.location.url, "ok": False, "bytes": 0, "error": exc.to_dict()}
            if progress:
                progress(1)
            return result
        return run

    report.details = details + run_tasks([task(p) for p in parts], workers)
    if not details and locate(path).is_dir():
        found = latest_version(locate(path), keys.keyring())
        report.dataset = dataset_facts(found) if found is not None else None
    return report.finish(started)


def _unchecked(location: Location) -> Part | dict[str, object]:
    """A file of a data set that failed its check: still verified on its own, or its error."""
    try:
        tail = read_file_tail(location)
        part_info(location, tail)
        return Part(location, tail, tail.size)
    except PpmlError as exc:
        return {"path": location.url, "ok": False, "bytes": 0, "error": exc.to_dict()}


def _unencrypted_columns(part: Part, keys: KeySettings) -> list[str]:
    """Columns whose pages nobody authenticates (PME leaves unlisted columns plaintext; ppml never does)."""
    metadata = FileKeys(part.location, part.tail, keys.keyring()).footer()
    columns, _, _ = pq_footer.column_crypto(metadata, name=part.location.url)
    return [c.path for c in columns if c.protection == "none"]


def _read_everything(part, keys: KeySettings) -> int:
    """Decrypt and decode every page of every column (each GCM tag checked); returns the rows."""
    if part.tail.algorithm.name == "AES_GCM_CTR_V1":
        warnings.warn(_CTR_VERIFY.format(url=part.location.url), PpmlInsecureWarning, stacklevel=4)
    rows = 0
    try:
        with part.location.open("rb") as raw:
            reader = pq.ParquetFile(raw, decryption_properties=decryption_properties(keys, part.location))
            for batch in reader.iter_batches(batch_size=_BATCH_ROWS):
                rows += batch.num_rows
    except (OSError, ValueError, pa.ArrowException, PpmlError) as exc:
        def diagnose():
            try:
                require_column_keys(part, keys, None)
            except PpmlError as found:
                return found
            return None

        raise explain_failure(exc, part.location, diagnose) from None
    return rows


def _output_name(relative: str) -> str:
    base, extension = posixpath.splitext(relative)
    return (base if extension else relative) + PARQUET_SUFFIX


def decrypt(src: str, dst: str, *, keys: KeySettings, force: bool = False, workers: int | None = None,
            progress: Progress | None = None, min_version: int | None = None) -> Report:
    """Encrypted Parquet (a file or a data set) into plaintext Parquet, file for file, same row groups.

    The input is checked first (manifest, each file's identity); every page is authenticated as it is
    read, and the output appears only when every file was.
    """
    started = time.perf_counter()
    source, target = locate(src), locate(dst)
    parts = checked_parts(source, keyring=keys.keyring(), min_version=min_version)
    report = Report("decrypt", PARQUET_FORMAT)
    with staged_output(target, force=force) as staging:
        def task(part) -> Callable[[], dict[str, object]]:
            def run() -> dict[str, object]:
                relative = posixpath.relpath(part.location.path, source.path) if source.is_dir() else ""
                out = staging.child(relative) if relative else staging
                with part.location.open("rb") as raw:
                    reader = pq.ParquetFile(raw, decryption_properties=decryption_properties(keys, part.location))
                    try:
                        rows = write_part(out, reader.schema_arrow, _groups(reader), keys=keys, encryption=None)
                    except (OSError, ValueError, pa.ArrowException) as exc:
                        raise explain_failure(exc, part.location, lambda: None) from None
                if progress:
                    progress(part.size)
                return {"source": part.location.url, "target": (target.child(relative) if relative else target).url,
                        "rows": rows, "bytes": part.size}
            return run

        report.details = run_tasks([task(p) for p in parts], workers)
    return report.finish(started)


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
