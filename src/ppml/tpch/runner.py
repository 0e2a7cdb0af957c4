"""Running the TPC-H queries on encrypted (or plaintext) tables, writing and checking the answers.

The layout follows BigDL's TPC-H example: inputs are ``<table>.tbl*`` in one folder (``lineitem.tbl.ppml``
once encrypted), each query's result goes to ``OUTPUT_DIR/Qnn`` as CSV with a header row in the output
crypto mode, and per-query seconds go to ``OUTPUT_DIR/TIMES.txt`` (``Q01<TAB>seconds``) and
``OUTPUT_DIR/times.json``.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ppml.io.batch import Report
from ppml.io.encryption import Encryption
from ppml.io.files import encrypt
from ppml.io.storage import locate
from ppml.spark.context import PPMLContext
from ppml.tpch.gen import keep_scale, require_tables
from ppml.tpch.queries import COLUMNS_USED, run_query
from ppml.tpch.schema import TABLE_NAMES, column_names, spark_schema
from ppml.tpch.spec import query_label
from ppml.tpch.tables import Tables, tbl_tables

__all__ = ["QueryRun", "Variant", "warm_up", "ppml_tables", "run_queries", "run_side_by_side", "encrypt_tables",
           "write_times", "decrypted_oracle", "spark_csv_tables"]

Progress = Callable[[str], None]


@dataclass
class QueryRun:
    """One query's outcome: result rows, seconds (query and encrypted write), and any mismatch found."""

    query: str
    rows: int
    seconds: float
    mismatches: list[str] = field(default_factory=list)
    checked: bool = False


def _table_glob(input_dir: str, table: str) -> str:
    return f"{input_dir.rstrip('/')}/{table}.tbl*"


def ppml_tables(ctx: PPMLContext, input_dir: str, crypto_mode: str, *, scale: float | None = None,
                prune: bool = True) -> Tables:
    """The eight tables read through ppml; each query parses only the columns it uses when ``prune``."""

    def load(table: str, columns: Sequence[str] | None) -> DataFrame:
        reader = ctx.read(crypto_mode).option("sep", "|").option("quote", "").schema(spark_schema(table))
        if columns is not None and prune:
            reader = reader.columns(*columns)
        df = reader.csv(_table_glob(input_dir, table))
        return df if columns is None or prune else df.select(*columns)

    return Tables(loader=load, scale=scale)


def encrypt_tables(input_dir: str, output_dir: str, encryption: Encryption, *, force: bool = False,
                   progress: Callable[[int], None] | None = None) -> Report:
    """Encrypt the eight ``<table>.tbl`` files of ``input_dir`` into ``output_dir`` (``<table>.tbl.ppml``)."""
    source = require_tables(input_dir, ".tbl", hint="generate the tables with 'ppml tpch gen --scale S --out DIR'")
    report = encrypt(input_dir, output_dir, force=force, progress=progress, **encryption.writer_arguments())
    keep_scale(source, output_dir)
    return report


@dataclass
class Variant:
    """One way of running the queries: the tables, where and how results are written, and the oracle.

    ``spark_writer`` writes plaintext results with Spark's own CSV writer (the baseline) instead of
    through ppml in ``output_mode``; ``oracle`` is an object with ``answer(n) -> rows``; ``label``
    prefixes the query in progress reports; ``parquet`` writes results as Parquet (PME-encrypted in an
    encrypted mode, :mod:`ppml.tpch.parquet`) instead of CSV.
    """

    tables: Tables
    output_dir: str
    output_mode: str
    spark_writer: bool = False
    oracle: object | None = None
    label: str = ""
    parquet: bool = False


#: The query :func:`warm_up` runs: filters, joins, an aggregate, a sort and a limit.
WARM_UP_QUERY = 3


def warm_up(ctx: PPMLContext, *variants: Variant) -> None:
    """Bring each variant to the state a long-running job is in, so that timings compare like with like.

    Spark starts a Python worker the first time each step of a Python data source runs (creating it,
    pushing filters, planning a read, reading on each core, creating and committing a writer) and its
    JVM compiles code as it first runs it. So for every variant this reads all eight tables in one stage
    (each through the filter pushdown a query plans, each core's worker unwrapping the data key) and runs
    :data:`WARM_UP_QUERY` end to end into a temporary folder (written, read back, checked if it has an oracle).
    """
    first_columns = {table: [column_names(table)[0]] for table in TABLE_NAMES}
    with tempfile.TemporaryDirectory(prefix="ppml-warm-up-") as scratch:
        for index, variant in enumerate(variants):
            keys = variant.tables.narrowed(first_columns)
            scans = [keys[table].where(F.col(column).isNotNull()).select(F.col(column).cast("long"))
                     for table, [column] in first_columns.items()]
            functools.reduce(DataFrame.union, scans).count()
            _run_one(ctx, replace(variant, output_dir=f"{scratch}/{index}"), WARM_UP_QUERY)


def run_side_by_side(ctx: PPMLContext, variants: Sequence[Variant], queries: Sequence[int], *,
                     progress: Progress | None = None) -> list[list[QueryRun]]:
    """Run each query in every variant before going on to the next query; returns each variant's runs.

    Which variant goes first rotates from one query to the next: the first run of a query compiles code
    that the next run of the same plan shape finds compiled, so a fixed order would favour the variants
    that run later.
    """
    runs: list[list[QueryRun]] = [[] for _ in variants]
    for turn, number in enumerate(queries):
        for index in [(turn + offset) % len(variants) for offset in range(len(variants))]:
            variant = variants[index]
            if progress:
                progress(f"{variant.label} {query_label(number)}".strip())
            runs[index].append(_run_one(ctx, variant, number))
    for variant, variant_runs in zip(variants, runs):
        write_times(variant.output_dir, variant_runs)
    return runs


def run_queries(ctx: PPMLContext, tables: Tables, output_dir: str, output_mode: str, queries: Sequence[int], *,
                oracle=None, progress: Progress | None = None, spark_writer: bool = False,
                parquet: bool = False) -> list[QueryRun]:
    """Run ``queries``, write each result encrypted in ``output_mode``, time them, and check with ``oracle``.

    ``oracle`` is an object with ``answer(n) -> rows``; when given, each written result is read back
    (decrypted) and compared value by value with it. ``spark_writer`` writes plaintext results with
    Spark's own CSV writer instead (the baseline). ``parquet`` writes results as Parquet (encrypted with
    PME in an encrypted mode) instead of CSV (:mod:`ppml.tpch.parquet`).
    """
    variant = Variant(tables, output_dir, output_mode, spark_writer=spark_writer, oracle=oracle, parquet=parquet)
    return run_side_by_side(ctx, [variant], queries, progress=progress)[0]


def _run_one(ctx: PPMLContext, variant: Variant, number: int) -> QueryRun:
    """Query ``number`` in ``variant``: timed from building the plan to the written result, then checked."""
    from ppml.tpch import parquet as tpch_parquet
    from ppml.tpch.comparison import compare

    label = query_label(number)
    target = f"{variant.output_dir.rstrip('/')}/{label}"
    started = time.perf_counter()
    df = run_query(number, variant.tables.narrowed(COLUMNS_USED[number]))  # each table parses only what it uses
    if variant.parquet:
        tpch_parquet.write_result(ctx, df, target, variant.output_mode, spark_writer=variant.spark_writer,
                                  label=f"TPC-H {label}")
    elif variant.spark_writer:
        df.write.mode("overwrite").option("header", True).csv(target)
    else:
        writer = ctx.write(df, variant.output_mode).label(f"TPC-H {label}")
        writer.mode("overwrite").option("header", True).csv(target)
    seconds = time.perf_counter() - started
    if variant.parquet:
        back = tpch_parquet.read_result(ctx, target, variant.output_mode, spark_writer=variant.spark_writer)
    elif variant.spark_writer:
        back = ctx.spark.read.option("header", True).schema(df.schema).csv(target).collect()
    else:
        back = ctx.read(variant.output_mode).option("header", True).schema(df.schema).csv(target).collect()
    run = QueryRun(label, len(back), seconds)
    if variant.oracle is not None:
        run.mismatches = compare(number, [tuple(r) for r in back], variant.oracle.answer(number))
        run.checked = True
    return run


def decrypted_oracle(input_dir: str, keyring, *, scale: float | None):
    """The DuckDB oracle over encrypted tables, decrypted in memory only (nothing plaintext on disk)."""
    from ppml.io.files import open_decrypted
    from ppml.spark.splits import list_files
    from ppml.tpch.oracle import Oracle
    from ppml.tpch.tables import read_tbl_arrow

    tables = {}
    for table in TABLE_NAMES:
        parts = []
        for location in list_files((_table_glob(input_dir, table),)):
            with open_decrypted(location, keyring=keyring) as plaintext:
                parts.append(read_tbl_arrow([plaintext], table))
        tables[table] = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
    return Oracle.from_arrow(tables, scale=scale)


def write_times(output_dir: str, runs: Sequence[QueryRun]) -> None:
    """``TIMES.txt`` (``Q01<TAB>seconds``, as BigDL writes it) and ``times.json`` in plain text."""
    root = locate(output_dir)
    with root.child("TIMES.txt").open("wb") as handle:
        handle.write("".join(f"{r.query}\t{r.seconds:.2f}\n" for r in runs).encode())
    with root.child("times.json").open("wb") as handle:
        handle.write(json.dumps({"schema": "ppml.tpch-times/1", "queries": [asdict(r) for r in runs]},
                                indent=2).encode())


def spark_csv_tables(spark: SparkSession, tbl_dir: str | Path, scale: float | None = None) -> Tables:
    """Plaintext tables through Spark's own CSV reader (the baseline)."""
    return tbl_tables(spark, tbl_dir, scale=scale)
