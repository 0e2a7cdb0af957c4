"""TPC-H as Parquet: plaintext ``<table>.parquet`` from the ``.tbl`` files, encrypted with PME, read by Spark.

Types are those of :mod:`ppml.tpch.schema` (keys as 64-bit integers, money as doubles, real dates), the
same in plaintext and encrypted files and the same as the CSV path reads, so every comparison is like
with like. Files are snappy-compressed with row groups of :data:`~ppml.parquet.tables.ROW_GROUP_ROWS`
rows. An encrypted folder is one data set of eight ``<table>.parquet`` members.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession

from ppml.errors import NotFoundError
from ppml.io.batch import Report
from ppml.keys.settings import KeySettings
from ppml.parquet import tables as pq_tables
from ppml.parquet import tools
from ppml.parquet.format import PARQUET_FORMAT
from ppml.parquet.settings import ParquetEncryption
from ppml.spark.context import PPMLContext
from ppml.tpch.gen import keep_scale, read_scale, require_tables
from ppml.tpch.schema import TABLE_NAMES
from ppml.tpch.tables import Tables, read_tbl_arrow

__all__ = ["table_file", "write_plain_parquet", "encrypt_tables", "parquet_tables", "spark_parquet_tables",
           "write_result", "read_result", "decrypted_oracle", "parquet_oracle"]


def table_file(folder: str | Path, table: str) -> str:
    return f"{str(folder).rstrip('/')}/{table}{tools.PARQUET_SUFFIX}"


def write_plain_parquet(tbl_dir: str | Path, *, force: bool = False) -> dict[str, Path]:
    """``<table>.parquet`` beside each ``<table>.tbl`` of ``tbl_dir`` (reused when newer than its ``.tbl``)."""
    folder = Path(tbl_dir)
    written = {}
    for table in TABLE_NAMES:
        source, target = folder / f"{table}.tbl", folder / f"{table}{tools.PARQUET_SUFFIX}"
        if not source.is_file():
            raise NotFoundError(f"{folder} has no {table}.tbl", hint="generate it with 'ppml tpch gen'")
        if force or not target.is_file() or target.stat().st_mtime < source.stat().st_mtime:
            staged = target.with_name(f".{target.name}.partial")
            pq.write_table(read_tbl_arrow([source], table), staged, compression="snappy",
                           row_group_size=pq_tables.ROW_GROUP_ROWS)
            os.replace(staged, target)
        written[table] = target
    return written


def encrypt_tables(input_dir: str, output_dir: str, *, keys: KeySettings, encryption: ParquetEncryption,
                   data_key: str | None = None, force: bool = False,
                   progress: Callable[[int], None] | None = None) -> Report:
    """The eight ``<table>.parquet`` of ``input_dir`` encrypted into the data set ``output_dir``.

    Column keys apply to the tables that have the columns they name (``c_phone`` in customer only).
    """
    source = require_tables(input_dir, tools.PARQUET_SUFFIX,
                            hint="generate them with 'ppml tpch gen --format parquet'")
    report = tools.encrypt(input_dir, output_dir, keys=keys, encryption=encryption, input_format=PARQUET_FORMAT,
                           data_key=data_key, force=force, progress=progress,
                           only=[f"{t}{tools.PARQUET_SUFFIX}" for t in TABLE_NAMES])
    keep_scale(source, output_dir)
    return report


def parquet_tables(ctx: PPMLContext, input_dir: str, crypto_mode: str, *, scale: float | None = None,
                   prune: bool = True, engine: str | None = None) -> Tables:
    """The eight tables read through ``ctx`` (encrypted in any encrypted mode); ``engine`` picks Spark's own
    reader or ppml's data source (default: the context's). Without ``prune`` every column is read."""

    def load(table: str, columns: Sequence[str] | None) -> DataFrame:
        reader = ctx.read(crypto_mode)
        if engine is not None:
            reader = reader.option("parquetEngine", engine)
        if columns is not None and prune:
            reader = reader.columns(*columns)
        df = reader.parquet(table_file(input_dir, table))
        return df if columns is None or prune else df.select(*columns)

    return Tables(loader=load, scale=scale)


def spark_parquet_tables(spark: SparkSession, folder: str | Path, *, scale: float | None = None) -> Tables:
    """Plaintext ``<table>.parquet`` through Spark's own Parquet reader (the baseline)."""

    def load(table: str, columns: Sequence[str] | None) -> DataFrame:
        df = spark.read.parquet(table_file(folder, table))
        return df if columns is None else df.select(*columns)

    return Tables(loader=load, scale=scale if scale is not None else read_scale(folder))


def write_result(ctx: PPMLContext, df: DataFrame, target: str, output_mode: str, *, spark_writer: bool,
                 label: str | None = None) -> None:
    """A query's result as Parquet: plaintext through Spark's writer (the baseline), else through ppml
    (``label`` names it in its provenance record)."""
    if spark_writer:
        df.write.mode("overwrite").parquet(target)
    else:
        writer = ctx.write(df, output_mode).mode("overwrite")
        (writer.label(label) if label else writer).parquet(target)


def read_result(ctx: PPMLContext, target: str, output_mode: str, *, spark_writer: bool) -> list:
    return (ctx.spark.read.parquet(target) if spark_writer else ctx.read(output_mode).parquet(target)).collect()


def decrypted_oracle(input_dir: str, keys: KeySettings, *, scale: float | None):
    """The DuckDB oracle over encrypted Parquet tables, decrypted in memory only."""
    from ppml.tpch.oracle import Oracle

    tables = {t: pq_tables.read_table(table_file(input_dir, t), keys=keys) for t in TABLE_NAMES}
    return Oracle.from_arrow(tables, scale=scale)


def parquet_oracle(input_dir: str | Path, keys: KeySettings, crypto_mode: str, *, scale: float | None):
    """The DuckDB oracle over ``<table>.parquet`` in ``input_dir``: plaintext in ``plain_text``, else
    encrypted (decrypted in memory only)."""
    from ppml.crypto.formats import PLAINTEXT
    from ppml.tpch.oracle import Oracle

    if crypto_mode != PLAINTEXT:
        return decrypted_oracle(str(input_dir), keys, scale=scale)
    tables = {t: pq.read_table(table_file(input_dir, t)) for t in TABLE_NAMES}
    return Oracle.from_arrow(tables, scale=scale if scale is not None else read_scale(input_dir))
