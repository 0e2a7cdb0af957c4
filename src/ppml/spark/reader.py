"""The read side of the ``ppml`` data source: encrypted CSV, JSON lines and text into Arrow batches.

The reader object is pickled into every task, so it holds only options and plans: no key material, no
open clients. Each task opens its file, unwraps the data key named in the file's own header through the
configured KMS (cached per executor process), authenticates and decrypts only the segments of its split,
and parses them with pyarrow.
"""

from __future__ import annotations

import functools
import io
import operator
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
from pyspark.sql.datasource import DataSourceReader, Filter
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from ppml.crypto.formats import get_format
from ppml.io.storage import locate
from ppml.spark.options import SourceOptions
from ppml.spark.parse_errors import ParseFailure, parse_error
from ppml.spark.pushdown import split_filters
from ppml.spark.splits import FileSplit, LineRange, plan_splits

__all__ = ["PpmlReader", "FilteringPpmlReader", "arrow_schema"]

_BLOCK = 8 * 1024 * 1024
_TRAILING = "__ppml_trailing__"


def arrow_schema(schema: StructType) -> pa.Schema:
    return to_arrow_schema(schema, timezone="UTC")


class PpmlReader(DataSourceReader):
    """Plans splits on the driver; reads one split per task."""

    def __init__(self, options: SourceOptions, schema: StructType, file_schema: StructType | None) -> None:
        self.options = options
        self.schema = schema
        self.file_schema = file_schema or schema
        self.filters: list[Filter] = []

    def partitions(self) -> list[FileSplit]:
        return plan_splits(self.options.paths, self.options.crypto_mode, self.options.split_size,
                           azure=self.options.storage, keyring=self.options.keys.keyring(),
                           expected=self.options.expected_versions)

    def read(self, partition: FileSplit) -> Iterator[pa.RecordBatch]:
        location = locate(partition.url, azure=self.options.storage)
        fmt = get_format(partition.format)
        target = arrow_schema(self.schema)
        expressions, _ = split_filters(self.filters, target)
        predicate = functools.reduce(operator.and_, expressions) if expressions else None
        skip_header = partition.start == 0 and self.options.text.header
        with location.open("rb") as raw:
            key = None
            if fmt.encrypted:
                info = fmt.describe(raw, name=location.url)
                partition.check(fmt, info, raw.seek(0, io.SEEK_END))
                key = self.options.keys.keyring().unwrap(info.envelope, name=location.url)
            try:
                with fmt.open_reader(raw, key, name=location.url) as plaintext:
                    lines = io.BufferedReader(LineRange(plaintext, partition.start, partition.end), _BLOCK)
                    for batch in self._parse(lines, skip_header=skip_header):
                        batch = _conform(batch, target)
                        if predicate is not None:  # one pass over the batch for all pushed filters
                            batch = batch.filter(predicate)
                        if batch.num_rows:
                            yield batch
            except ParseFailure as failure:
                with fmt.open_reader(raw, key, name=location.url) as plaintext:
                    rows = io.BufferedReader(LineRange(plaintext, partition.start, partition.end), _BLOCK)
                    if skip_header:
                        rows.readline()
                    raise parse_error(failure, name=location.url, start=partition.start, lines=rows,
                                      sep=self.options.text.sep, columns=list(self.file_schema.names)) from None

    def _parse(self, lines: io.BufferedReader, *, skip_header: bool) -> Iterator[pa.RecordBatch]:
        text = self.options.text
        if text.format == "text":
            yield from _parse_text(lines, skip_header)
            return
        wanted = arrow_schema(self.file_schema)
        if text.format == "json":
            options = pa_json.ParseOptions(explicit_schema=wanted, unexpected_field_behavior="ignore")
            if not lines.peek(1):
                return
            yield from _counted(lambda: pa_json.open_json(lines, read_options=pa_json.ReadOptions(block_size=_BLOCK),
                                                          parse_options=options))
            return
        if skip_header:
            lines.readline()
        first = lines.peek(1 << 16)
        if not first:
            return
        names = list(wanted.names)
        if _has_trailing_delimiter(first, text.sep, len(names), text.trailing_delimiter):
            names.append(_TRAILING)
        read_options = pa_csv.ReadOptions(column_names=names, block_size=_BLOCK)
        # With one column, an empty line is a row whose value is null, not a line to skip.
        parse_options = pa_csv.ParseOptions(delimiter=text.sep, quote_char=text.quote or False,
                                            escape_char=text.escape or False, ignore_empty_lines=len(names) > 1)
        convert_options = pa_csv.ConvertOptions(
            column_types={f.name: f.type for f in wanted}, include_columns=list(self.schema.names),
            null_values=[text.null_value], strings_can_be_null=True, quoted_strings_can_be_null=False,
        )
        yield from _counted(lambda: pa_csv.open_csv(lines, read_options=read_options, parse_options=parse_options,
                                                    convert_options=convert_options))


class FilteringPpmlReader(PpmlReader):
    """A reader that takes Spark's pushed filters (needs ``spark.sql.python.filterPushdown.enabled``)."""

    def pushFilters(self, filters: list[Filter]):  # noqa: N802 - Spark's name
        _, left = split_filters(filters, arrow_schema(self.schema))
        left_ids = {id(f) for f in left}
        self.filters = [f for f in filters if id(f) not in left_ids]
        return left


def _counted(open_batches: Callable[[], pa.RecordBatchReader]) -> Iterator[pa.RecordBatch]:
    """The batches ``open_batches()`` reads, turning Arrow's parse errors (which quote data, and come from
    opening as well as reading) into :class:`ParseFailure` with the count of rows parsed before.

    The reader is closed before its file even when the task stops early (a ``LIMIT``): it reads ahead on a
    thread of its own."""
    rows = 0
    try:
        with open_batches() as batches:
            for batch in batches:
                rows += batch.num_rows
                yield batch
    except pa.ArrowInvalid as exc:
        raise ParseFailure(str(exc), rows) from None


def _has_trailing_delimiter(first: bytes, sep: str, columns: int, setting: str) -> bool:
    if setting in ("true", "false"):
        return setting == "true"
    line = first.split(b"\n", 1)[0].rstrip(b"\r")
    return line.endswith(sep.encode()) and line.count(sep.encode()) == columns


def _parse_text(lines: io.BufferedReader, skip_header: bool) -> Iterator[pa.RecordBatch]:
    if skip_header:
        lines.readline()
    while chunk := lines.read(_BLOCK):
        chunk += lines.readline()
        values = chunk.decode("utf-8").split("\n")
        if values and values[-1] == "":
            values.pop()
        yield pa.record_batch([pa.array([v.rstrip("\r") for v in values], pa.string())], names=["value"])


@functools.lru_cache(maxsize=64)
def _identity(source: pa.Schema, target: pa.Schema) -> bool:
    return source.equals(target)


def _conform(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """The batch with exactly Spark's column names and types (Arrow must match Spark's schema exactly)."""
    if _identity(batch.schema, target):
        return batch
    columns = []
    for field in target:
        index = batch.schema.get_field_index(field.name)
        column = batch.column(index) if index >= 0 else pa.nulls(batch.num_rows, field.type)
        columns.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=target)
