"""What Spark works out for its own file scans but cannot ask a Python data source: sizes.

Spark knows how many bytes a file scan reads. It cuts the files into about as many pieces as the session
has cores (``FilePartition.maxSplitBytes``), and it broadcasts a join side whose estimated size, the files'
size times the share of the row's width that is read, is under ``spark.sql.autoBroadcastJoinThreshold``.
A Python data source reports no size, so without these numbers a small table is read by one task and
never broadcast. :class:`~ppml.spark.context.PPMLContext` reads apply the same rules to the stored sizes;
a broadcast mark that cannot be used (a read that is not joined, the kept side of an outer join) changes
nothing, as for a file.
"""

from __future__ import annotations

import re

from pyspark.sql import SparkSession
from pyspark.sql.types import (
    BinaryType,
    BooleanType,
    ByteType,
    DateType,
    DecimalType,
    FloatType,
    IntegerType,
    ShortType,
    StringType,
    StructType,
)

from ppml.errors import ConfigError

__all__ = ["broadcastable", "split_size"]

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40, "p": 1 << 50, "pb": 1 << 50}
# Bytes per value as Spark estimates a row (DataType.defaultSize); other types count 8.
_WIDTHS = {StringType: 20, BinaryType: 100, BooleanType: 1, ByteType: 1, ShortType: 2, IntegerType: 4, DateType: 4,
           FloatType: 4}
MIN_SPLIT = 1 << 20


def _bytes(spark: SparkSession, setting: str, default: str) -> int:
    """A byte-size setting of the session (``10MB``, ``134217728b``, ``-1``), in bytes."""
    value = spark.conf.get(setting, default) or default
    match = re.fullmatch(r"\s*(-?\d+)\s*([a-zA-Z]*)\s*", value)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"{setting} is {value!r}, not a size in bytes", hint="e.g. 10MB, 134217728 or -1")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _row_width(schema: StructType) -> int:
    """A row's width as Spark estimates it: each value's default size, plus 8 bytes per row."""
    return 8 + sum((8 if f.dataType.precision <= 18 else 16) if isinstance(f.dataType, DecimalType)
                   else _WIDTHS.get(type(f.dataType), 8) for f in schema)


def split_size(spark: SparkSession, sizes: list[int]) -> int:
    """Bytes per task for files of ``sizes``, by Spark's rule for its file sources.

    The files' bytes (each counted with ``spark.sql.files.openCostInBytes`` more) shared out over the
    session's cores, at least that open cost and at most ``spark.sql.files.maxPartitionBytes``; never
    below 1 MiB, the ppml reader's smallest split.
    """
    open_cost = _bytes(spark, "spark.sql.files.openCostInBytes", "4MB")
    cores = int(spark.conf.get("spark.sql.files.minPartitionNum", None) or
                spark.conf.get("spark.sql.leafNodeDefaultParallelism", None) or spark.sparkContext.defaultParallelism)
    per_core = sum(size + open_cost for size in sizes) // max(cores, 1)
    return max(MIN_SPLIT, min(_bytes(spark, "spark.sql.files.maxPartitionBytes", "128MB"), max(open_cost, per_core)))


def broadcastable(spark: SparkSession, sizes: list[int], schema: StructType, file_schema: StructType) -> bool:
    """Whether Spark would broadcast a scan of ``schema``'s columns out of files of ``sizes`` laid out as
    ``file_schema``: its estimated size is within ``spark.sql.autoBroadcastJoinThreshold`` (``-1``: never)."""
    threshold = _bytes(spark, "spark.sql.autoBroadcastJoinThreshold", "10MB")
    return threshold > 0 and sum(sizes) * _row_width(schema) / _row_width(file_schema) <= threshold
