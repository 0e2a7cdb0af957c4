"""Encrypted Parquet through the ``ppml`` data source (``option("format", "parquet")``), with pyarrow inside.

Reads: the driver checks the input against its data-set manifests (:func:`ppml.parquet.datasets.checked_parts`)
and plans one task per group of row groups of about ``splitSize`` bytes. Each task checks that its file is
still the one the plan saw (its ``aad_file_unique``), decrypts only the columns of the schema Spark was given
(a narrower schema is column pruning) and only the row groups whose statistics can match the pushed filters,
and drops non-matching rows before they cross into the JVM.

Writes: each task writes one encrypted part under ``_temporary/<job>/``; the driver's commit publishes the
parts and records the data set's next version (:func:`ppml.parquet.datasets.publish`), then writes
``_SUCCESS``. A failed job leaves the output as it was.

Nothing picklable here holds a key: tasks unwrap keys through the key settings, in their own process.
"""

from __future__ import annotations

import functools
import glob as _glob
import operator
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql.datasource import DataSourceArrowWriter, DataSourceReader, Filter, InputPartition, WriterCommitMessage
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import get_format
from ppml.errors import ConfigError, IntegrityError, NotFoundError, PpmlError
from ppml.io.storage import Location, locate, move_files, remove_staging, staging_folder
from ppml.parquet.datasets import (
    Part,
    checked_parts,
    manifest_key,
    publish,
    read_file_tail,
)
from ppml.parquet.kms import decryption_properties, explain_failure
from ppml.parquet.masterkeys import master_key_of
from ppml.parquet.settings import ALGORITHMS, DEFAULT_MASTER_KEY, ParquetEncryption
from ppml.parquet.tables import leaf_columns, part_dataset, require_column_keys, write_part
from ppml.spark.options import SourceOptions
from ppml.spark.provenance import attestation_records, record_provenance
from ppml.spark.pushdown import split_filters
from ppml.spark.reader import FilteringPpmlReader, _conform, arrow_schema
from ppml.spark.writer import SUCCESS, task_input

__all__ = ["infer_schema", "encrypted", "encryption", "manifest_envelope", "ParquetReader", "FilteringParquetReader",
           "ParquetWriter"]


def encrypted(options: SourceOptions) -> bool:
    """Whether the source reads and writes encrypted Parquet (any encrypted crypto mode) or plaintext."""
    return get_format(options.crypto_mode).encrypted


def encryption(options: SourceOptions) -> ParquetEncryption:
    """What an encrypted write does: the options' keys, the crypto mode's algorithm (AES_GCM_V1 unless
    ``aes_gcm_ctr_v1``), and by default the footer key that wraps the data-key file (else ``default``)."""
    mode = options.crypto_mode.lower()
    footer = master_key_of(options.keys, options.envelope()) if options.data_key_json else DEFAULT_MASTER_KEY
    return ParquetEncryption.from_options(dict(options.parquet), algorithm=mode if mode in ALGORITHMS else "aes_gcm_v1",
                                          default_footer_key=footer)


def manifest_envelope(options: SourceOptions, footer_key: str) -> tuple[WrappedKey, ...]:
    """The wrapped copies of the key that authenticates the output's manifest (see
    :func:`ppml.parquet.datasets.manifest_key`), made on the driver."""
    return options.envelope() if options.data_key_json else manifest_key(options.keys, footer_key)[1]


def _parts(options: SourceOptions) -> list[Part]:
    found: list[Part] = []
    for path in options.paths:
        roots = locate(path, azure=options.storage).glob() if _glob.has_magic(path) else [locate(path, azure=options.storage)]
        if not roots:
            raise NotFoundError(f"no files match {path}")
        for root in roots:
            found.extend(checked_parts(root, keyring=options.keys.keyring() if encrypted(options) else None,
                                       encrypted=encrypted(options)))
    if not found:
        raise NotFoundError(f"no Parquet files under {', '.join(options.paths)}")
    return found


def _keys(options: SourceOptions):
    return options.keys if encrypted(options) else None


def infer_schema(options: SourceOptions) -> StructType:
    """The Spark schema of the first file (its footer, decrypted with the footer key)."""
    part = _parts(options)[0]
    return from_arrow_schema(part_dataset(part, _keys(options)).schema)


class ParquetSplit(InputPartition):
    """One task's row groups of one file, and the file identity the plan saw."""

    def __init__(self, url: str, file_id: str | None, row_groups: list[int]) -> None:
        super().__init__((url, file_id, tuple(row_groups)))
        self.url, self.file_id, self.row_groups = url, file_id, row_groups


class ParquetReader(DataSourceReader):
    """Plans row-group splits on the driver; reads one split per task."""

    def __init__(self, options: SourceOptions, schema: StructType) -> None:
        self.options = options
        self.schema = schema
        self.filters: list[Filter] = []

    def partitions(self) -> list[ParquetSplit]:
        splits = []
        for part in _parts(self.options):
            if encrypted(self.options):
                require_column_keys(part, self.options.keys, self.schema.names)  # fail on the driver, naming them
            splits.extend(self._split(part))
        return splits

    def _split(self, part: Part) -> list[ParquetSplit]:
        keys = _keys(self.options)
        properties = decryption_properties(keys, part.location) if keys is not None else None
        with part.location.open("rb") as raw:
            metadata = pq.ParquetFile(raw, decryption_properties=properties).metadata
        groups: list[list[int]] = [[]]
        size = 0
        for index in range(metadata.num_row_groups):
            if groups[-1] and size >= self.options.split_size:
                groups.append([])
                size = 0
            groups[-1].append(index)
            size += metadata.row_group(index).total_byte_size
        return [ParquetSplit(part.location.url, part.tail.file_id, group) for group in groups if group]

    def read(self, partition: ParquetSplit) -> Iterator[pa.RecordBatch]:
        location = locate(partition.url, azure=self.options.storage)
        tail = read_file_tail(location)
        if tail.file_id != partition.file_id:
            raise IntegrityError(f"{location.url} was replaced after the read was planned", path=location.url,
                                 hint="read it again; if it keeps changing, a write to it is in progress")
        target = arrow_schema(self.schema)
        expressions, _ = split_filters(self.filters, target)
        predicate = functools.reduce(operator.and_, expressions) if expressions else None
        part = Part(location, tail, tail.size)
        keys = _keys(self.options)
        fragment = next(iter(part_dataset(part, keys).get_fragments())).subset(row_group_ids=partition.row_groups)
        try:
            for batch in fragment.to_batches(columns=list(self.schema.names), filter=predicate):
                if batch.num_rows:
                    yield _conform(batch, target)
        except (OSError, ValueError, pa.ArrowException, PpmlError) as exc:
            if keys is None:
                raise
            raise explain_failure(exc, location, lambda: None) from None


class FilteringParquetReader(ParquetReader):
    """A reader that takes Spark's pushed filters (needs ``spark.sql.python.filterPushdown.enabled``): the
    same filters as the CSV reader, which here also skip row groups by their statistics."""

    pushFilters = FilteringPpmlReader.pushFilters  # noqa: N815 - Spark's name


@dataclass
class ParquetPart(WriterCommitMessage):
    staged: str | None  # None: the task's partition was empty and wrote nothing
    name: str | None
    attestation: tuple[dict, ...] = ()  # what the task's process proved to key brokers (for provenance)


class ParquetWriter(DataSourceArrowWriter):
    """One encrypted Parquet part per task; picklable (options and names only)."""

    def __init__(self, options: SourceOptions, schema: StructType, overwrite: bool) -> None:
        if len(options.paths) != 1:
            raise ConfigError("writing needs exactly one output path")
        self.options, self.schema, self.overwrite = options, schema, overwrite
        self.job_id = uuid.uuid4().hex[:16]
        self.encryption: ParquetEncryption | None = encryption(options) if encrypted(options) else None
        if self.encryption is not None:
            self.encryption.assignment(leaf_columns(arrow_schema(schema)))  # unknown columns fail before any task
            self.manifest_envelope = manifest_envelope(options, self.encryption.footer_key)
        self._root().require_container()

    def _root(self) -> Location:
        return locate(self.options.paths[0], azure=self.options.storage)

    def write(self, iterator: Iterator[pa.RecordBatch]) -> ParquetPart:
        task = task_input(iterator)
        if task.first is None and task.partition != 0:
            return ParquetPart(None, None)
        name = f"part-{task.partition:05d}-{self.job_id}.parquet"
        staged = staging_folder(self._root(), f"{self.job_id}/{task.attempt}").child(name)
        schema = task.first.schema if task.first is not None else arrow_schema(self.schema)
        write_part(staged, schema, task.batches, keys=self.options.keys, encryption=self.encryption)
        return ParquetPart(staged.url, name, tuple(attestation_records()))

    def commit(self, messages: list[ParquetPart | None]) -> None:
        root = self._root()
        success = root.child(SUCCESS)
        if success.exists():  # an old marker must not vouch for a folder whose parts are being replaced
            success.remove()
        parts = [(locate(m.staged, azure=self.options.storage), m.name) for m in messages if m is not None and m.staged]
        if self.encryption is not None:
            keyring = self.options.keys.keyring()
            key = keyring.unwrap(self.manifest_envelope, name=f"the manifest key of {root.url}")
            version = publish(root, parts, replace=self.overwrite, key=key, envelope=self.manifest_envelope,
                              keyring=keyring, writer="ppml Spark writer (encrypted Parquet)")
            attested = [a for m in messages if m is not None for a in m.attestation]
            record_provenance(root, version, self.options, attested)
        else:
            _publish_plain(root, parts, replace=self.overwrite)
        remove_staging(staging_folder(root, self.job_id))
        with success.open("wb"):
            pass

    def abort(self, messages: list[ParquetPart | None]) -> None:
        remove_staging(staging_folder(self._root(), self.job_id))


def _publish_plain(root: Location, parts: list[tuple[Location, str]], *, replace: bool) -> None:
    produced = {name for _, name in parts}
    if replace and root.exists():
        for relative, _ in root.files():
            if relative not in produced:
                root.child(relative).remove()
    move_files(root, [(staged.path, root.child(name).path) for staged, name in parts])
