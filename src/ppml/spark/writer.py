"""The write side of the ``ppml`` data source: Arrow batches into encrypted part files, committed atomically.

Each task writes one part file under ``<output>/_temporary/<job>/`` (hidden from readers), encrypted as it
is written; the plaintext never lands on disk. Only when every task has succeeded does the driver's ``commit``
remove any old ``_SUCCESS``, move the parts into place (renames locally; on object stores such as Azure Blob,
server-side copies that each replace one blob atomically, then deletes), only then remove what an ``overwrite``
replaces, record the data set's next version in its authenticated manifest and its signed provenance record
(encrypted formats; see :mod:`ppml.io.datasets` and :mod:`ppml.io.provenance`) and write ``_SUCCESS`` last;
``abort`` deletes the temporary parts. A failed job therefore leaves the output as it was, and a commit cut
short (storage lost while moving parts) still leaves all the old parts, next to any new ones already moved,
without ``_SUCCESS`` and under the old manifest version.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pa_csv
from pyspark import TaskContext
from pyspark.sql.datasource import DataSourceArrowWriter, WriterCommitMessage
from pyspark.sql.types import StructType

from ppml.crypto.formats import get_format
from ppml.crypto.manifest import Member
from ppml.errors import ConfigError
from ppml.io.datasets import DataSetVersion, commit_version, member
from ppml.io.files import describe
from ppml.io.storage import Location, locate, move_files, remove_staging, staging_folder
from ppml.spark.options import SourceOptions
from ppml.spark.provenance import attestation_records, record_provenance

__all__ = ["PpmlWriter", "PartCommit", "SUCCESS", "task_input"]

SUCCESS = "_SUCCESS"


@dataclass
class PartCommit(WriterCommitMessage):
    staged: str | None  # None: the task's partition was empty and wrote nothing
    final: str | None
    member: Member | None = None  # the part as the data-set manifest records it (encrypted formats)
    attestation: tuple[dict, ...] = ()  # what the task's process proved to key brokers (for provenance)


def _json_default(value: object) -> object:
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot write a {type(value).__name__} value as JSON")


class PpmlWriter(DataSourceArrowWriter):
    """One part file per task; picklable (options and names only)."""

    def __init__(self, options: SourceOptions, schema: StructType, overwrite: bool) -> None:
        self.options = options
        self.schema = schema
        self.overwrite = overwrite
        self.job_id = uuid.uuid4().hex[:16]
        self.format = get_format(options.crypto_mode).name
        if len(options.paths) != 1:
            raise ConfigError("writing needs exactly one output path")
        self.writer_options = get_format(self.format).writer_options(segment=options.segment)
        if get_format(self.format).encrypted:
            options.envelope()  # fail on the driver, before any task, when no data key is configured
        self._root().require_container()  # likewise for a missing Azure container

    def _root(self) -> Location:
        return locate(self.options.paths[0], azure=self.options.storage)

    def write(self, iterator: Iterator[pa.RecordBatch]) -> PartCommit:
        task = task_input(iterator)
        if task.first is None and task.partition != 0:
            return PartCommit(None, None)
        fmt = get_format(self.format)
        root = self._root()
        name = f"part-{task.partition:05d}-{self.job_id}.{self.options.text.format}{fmt.suffix}"
        staged = staging_folder(root, self.job_id).child(f"{task.attempt}-{name}")
        final = root.child(name)
        key, envelope = None, ()
        if fmt.encrypted:
            envelope = self.options.envelope()
            key = self.options.keys.keyring().unwrap(envelope, name=f"the data key for {root.url}")
        with staged.open("wb") as raw, fmt.open_writer(raw, key, envelope, name=final.url,
                                                       **self.writer_options) as out:
            self._encode(task.batches, out, task.first.schema if task.first is not None else None)
        part = member(name, fmt, describe(staged, fmt), staged.size()) if fmt.encrypted else None
        return PartCommit(staged.url, final.url, part, tuple(attestation_records()))

    def _encode(self, batches: Iterator[pa.RecordBatch], out, schema: pa.Schema | None) -> None:
        text = self.options.text
        if text.format == "csv":
            if schema is None:
                if text.header:
                    out.write((text.sep.join(self.schema.names) + "\n").encode())
                return
            options = pa_csv.WriteOptions(include_header=text.header, delimiter=text.sep,
                                          quoting_style="needed" if text.quote else "none")
            with pa_csv.CSVWriter(out, schema, write_options=options) as csv_writer:
                for batch in batches:
                    csv_writer.write_batch(batch)
        elif text.format == "json":
            for batch in batches:
                rows = batch.to_pylist()
                out.write("".join(json.dumps(r, default=_json_default, separators=(",", ":")) + "\n"
                                  for r in rows).encode())
        else:
            for batch in batches:
                values = batch.column(0).to_pylist()
                out.write("".join(("" if v is None else str(v)) + "\n" for v in values).encode())

    def commit(self, messages: list[PartCommit | None]) -> None:
        root = self._root()
        success = root.child(SUCCESS)
        if success.exists():  # an old marker must not vouch for a folder whose parts are being replaced
            success.remove()
        produced = {m.final for m in messages if m is not None and m.final}
        replaced = [relative for relative, _ in root.files()] if self.overwrite and root.exists() else []
        # Renames locally; on object stores server-side copies (each part appears whole) then deletes. Before
        # anything is removed: a commit cut short must never have destroyed the output it was to replace.
        move_files(root, [(locate(m.staged, azure=self.options.storage).path,
                           locate(m.final, azure=self.options.storage).path)
                          for m in messages if m is not None and m.staged])
        for relative in replaced:
            existing = root.child(relative)
            if existing.url not in produced:
                existing.remove()
        fmt = get_format(self.format)
        for name, data in fmt.sidecars(self.options.envelope() if fmt.encrypted else ()).items():
            with root.child(name).open("wb") as handle:
                handle.write(data)
        self._cleanup(root)
        if fmt.encrypted:
            parts = [m for m in messages if m is not None]
            version = self._record_version(root, [m.member for m in parts if m.member is not None])
            record_provenance(root, version, self.options, [a for m in parts for a in m.attestation])
        with root.child(SUCCESS).open("wb"):
            pass

    def _record_version(self, root: Location, parts: list[Member]) -> DataSetVersion:
        """The data set's next manifest version: the parts written (and, when appending, what was there)."""
        envelope = self.options.envelope()
        ring = self.options.keys.keyring()
        key = ring.unwrap(envelope, name=f"the data key for {root.url}")

        def existing() -> list[Member]:
            found = []
            for relative, size in root.files():
                info = describe(root.child(relative))
                fmt = get_format(info.format)
                if fmt.identity(info) is None:
                    raise ConfigError(f"{root.child(relative).url} is a plaintext file; appending encrypted files "
                                      "to its folder would make a data set that includes it",
                                      hint="write to another folder, or move the plaintext file away")
                found.append(member(relative, fmt, info, size))
            return found

        return commit_version(root, parts, replace=self.overwrite, key=key, envelope=tuple(envelope), keyring=ring,
                              writer=f"ppml Spark writer ({self.format})", existing=existing)

    def abort(self, messages: list[PartCommit | None]) -> None:
        self._cleanup(self._root())

    def _cleanup(self, root: Location) -> None:
        remove_staging(staging_folder(root, self.job_id))


@dataclass(frozen=True)
class TaskInput:
    """What a write task was given: its partition, its attempt, and its rows (``first`` is ``None`` when
    there are none)."""

    partition: int
    attempt: int
    first: pa.RecordBatch | None
    batches: Iterator[pa.RecordBatch]


def task_input(iterator: Iterator[pa.RecordBatch]) -> TaskInput:
    """The task's place and rows, its first batch looked at (an empty task past the first writes no part)."""
    context = TaskContext.get()
    first = next(iterator, None)
    return TaskInput(context.partitionId() if context else 0, context.attemptNumber() if context else 0, first,
                     iter(()) if first is None else _chain(first, iterator))


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest
