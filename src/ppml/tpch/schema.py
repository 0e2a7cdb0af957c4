"""The eight TPC-H tables: dbgen column names and types, as Spark and Arrow schemas and DuckDB column
types, and their file names.

Types follow BigDL's TPC-H example (itself from ``tpch-spark``): keys as 64-bit integers, small counts as
32-bit integers, money, quantities, discounts and taxes as doubles; dates are real dates and text is text.
:func:`arrow_schema` gives exactly the Arrow types Spark expects for :func:`spark_schema` (``int64``,
``int32``, ``float64``, ``date32``, ``string`` -- never ``large_string``), which is what a Python data
source must yield. :func:`duckdb_columns` gives the specification's own types (clause 1.4.1) for the
DuckDB oracle instead: ``DECIMAL(15,2)`` where Spark has doubles, ``INTEGER`` keys except the ``BIGINT``
order keys.

Inputs are dbgen-style ``.tbl`` files: ``|``-separated, no header, no quoting, and every row ends with a
trailing ``|`` (so a CSV reader sees one extra, empty column: :data:`TRAILING_COLUMN`). A table may be one
file ``<table>.tbl`` or several (``<table>.tbl.1``, ``<table>.tbl.2``, ... as dbgen ``-C`` writes them);
encrypted copies keep the name and add a suffix (``<table>.tbl.cbc``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ppml.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow
    from pyspark.sql.types import DataType, StructType

__all__ = [
    "TABLE_NAMES",
    "TABLES",
    "TABLE_FILES",
    "TRAILING_COLUMN",
    "column_names",
    "spark_schema",
    "arrow_schema",
    "duckdb_columns",
    "table_files",
]

TABLE_NAMES: tuple[str, ...] = (
    "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
)

#: Name given to the empty field after each row's trailing ``|`` when a CSV reader must name it.
TRAILING_COLUMN = "_trailing"

#: ``<table>`` -> glob pattern of its input files inside a folder.
TABLE_FILES: dict[str, str] = {name: f"{name}.tbl*" for name in TABLE_NAMES}

#: ``TABLES``: ``<table>`` -> ``[(column, Spark DataType), ...]`` in dbgen column order. It is a plain
#: dict built on first access (importing this module does not need pyspark; reading ``TABLES`` does).

# Logical column types, turned into Spark / Arrow / DuckDB types on demand so that importing this module
# needs none of pyspark, pyarrow and duckdb. Order keys are a kind of their own for DuckDB alone: they are
# sparse, up to 6,000,000 x SF, and pass 2**31 from SF 358 on, far sooner than the other keys.
_KEY, _ORDER_KEY, _INT, _DECIMAL, _DATE, _TEXT = "key", "order key", "int", "decimal", "date", "text"

_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "region": [
        ("r_regionkey", _KEY), ("r_name", _TEXT), ("r_comment", _TEXT),
    ],
    "nation": [
        ("n_nationkey", _KEY), ("n_name", _TEXT), ("n_regionkey", _KEY), ("n_comment", _TEXT),
    ],
    "supplier": [
        ("s_suppkey", _KEY), ("s_name", _TEXT), ("s_address", _TEXT), ("s_nationkey", _KEY),
        ("s_phone", _TEXT), ("s_acctbal", _DECIMAL), ("s_comment", _TEXT),
    ],
    "customer": [
        ("c_custkey", _KEY), ("c_name", _TEXT), ("c_address", _TEXT), ("c_nationkey", _KEY),
        ("c_phone", _TEXT), ("c_acctbal", _DECIMAL), ("c_mktsegment", _TEXT), ("c_comment", _TEXT),
    ],
    "part": [
        ("p_partkey", _KEY), ("p_name", _TEXT), ("p_mfgr", _TEXT), ("p_brand", _TEXT), ("p_type", _TEXT),
        ("p_size", _INT), ("p_container", _TEXT), ("p_retailprice", _DECIMAL), ("p_comment", _TEXT),
    ],
    "partsupp": [
        ("ps_partkey", _KEY), ("ps_suppkey", _KEY), ("ps_availqty", _INT), ("ps_supplycost", _DECIMAL),
        ("ps_comment", _TEXT),
    ],
    "orders": [
        ("o_orderkey", _ORDER_KEY), ("o_custkey", _KEY), ("o_orderstatus", _TEXT), ("o_totalprice", _DECIMAL),
        ("o_orderdate", _DATE), ("o_orderpriority", _TEXT), ("o_clerk", _TEXT), ("o_shippriority", _INT),
        ("o_comment", _TEXT),
    ],
    "lineitem": [
        ("l_orderkey", _ORDER_KEY), ("l_partkey", _KEY), ("l_suppkey", _KEY), ("l_linenumber", _INT),
        ("l_quantity", _DECIMAL), ("l_extendedprice", _DECIMAL), ("l_discount", _DECIMAL), ("l_tax", _DECIMAL),
        ("l_returnflag", _TEXT), ("l_linestatus", _TEXT), ("l_shipdate", _DATE), ("l_commitdate", _DATE),
        ("l_receiptdate", _DATE), ("l_shipinstruct", _TEXT), ("l_shipmode", _TEXT), ("l_comment", _TEXT),
    ],
}


def _spark_type(kind: str) -> DataType:
    from pyspark.sql import types as T

    return {_KEY: T.LongType(), _ORDER_KEY: T.LongType(), _INT: T.IntegerType(), _DECIMAL: T.DoubleType(),
            _DATE: T.DateType(), _TEXT: T.StringType()}[kind]


def _arrow_type(kind: str) -> pyarrow.DataType:
    import pyarrow as pa

    return {_KEY: pa.int64(), _ORDER_KEY: pa.int64(), _INT: pa.int32(), _DECIMAL: pa.float64(),
            _DATE: pa.date32(), _TEXT: pa.string()}[kind]


_DUCKDB_TYPES: dict[str, str] = {_KEY: "INTEGER", _ORDER_KEY: "BIGINT", _INT: "INTEGER",
                                 _DECIMAL: "DECIMAL(15,2)", _DATE: "DATE", _TEXT: "VARCHAR"}


_TABLES: dict[str, list[tuple[str, DataType]]] | None = None


def __getattr__(name: str):
    # ``TABLES`` is built on first access (PEP 562) so that importing this module does not need pyspark.
    global _TABLES
    if name == "TABLES":
        if _TABLES is None:
            _TABLES = {t: [(c, _spark_type(k)) for c, k in _COLUMNS[t]] for t in TABLE_NAMES}
        return _TABLES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_table(table: str) -> str:
    if table not in _COLUMNS:
        raise UsageError(f"unknown TPC-H table {table!r}", hint=f"tables are: {', '.join(TABLE_NAMES)}")
    return table


def _pick(table: str, columns: Sequence[str] | None) -> list[tuple[str, str]]:
    cols = _COLUMNS[_check_table(table)]
    if columns is None:
        return list(cols)
    wanted = list(columns)
    known = {c for c, _ in cols}
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise UsageError(f"table {table} has no column {', '.join(map(repr, unknown))}",
                         hint=f"its columns are: {', '.join(c for c, _ in cols)}")
    keep = set(wanted)
    return [(c, k) for c, k in cols if c in keep]  # always in table order


def column_names(table: str) -> list[str]:
    """The dbgen column names of ``table``, in file order."""
    return [c for c, _ in _COLUMNS[_check_table(table)]]


def spark_schema(table: str, columns: Sequence[str] | None = None, *, trailing: bool = False) -> StructType:
    """The Spark schema of ``table``.

    ``columns`` narrows it to those columns (kept in table order), e.g. for a data source that reads
    only what a query needs. ``trailing=True`` appends the nullable string :data:`TRAILING_COLUMN` that a
    CSV reader sees after each row's final ``|`` (only meaningful with all columns).
    """
    from pyspark.sql import types as T

    fields = [T.StructField(c, _spark_type(k), True) for c, k in _pick(table, columns)]
    if trailing:
        fields.append(T.StructField(TRAILING_COLUMN, T.StringType(), True))
    return T.StructType(fields)


def arrow_schema(table: str, columns: Sequence[str] | None = None) -> pyarrow.Schema:
    """The Arrow schema matching :func:`spark_schema` exactly (all fields nullable, like Spark's)."""
    import pyarrow as pa

    return pa.schema([pa.field(c, _arrow_type(k), nullable=True) for c, k in _pick(table, columns)])


def duckdb_columns(table: str) -> list[tuple[str, str]]:
    """The columns of ``table`` with the specification's SQL types, as DuckDB spells them.

    Parameters
    ----------
    table : str
        One of :data:`TABLE_NAMES`.

    Returns
    -------
    list of (str, str)
        ``(column, type)`` in file order, e.g. ``("o_totalprice", "DECIMAL(15,2)")``.

    Raises
    ------
    UsageError
        If ``table`` is not a TPC-H table.
    """
    return [(c, _DUCKDB_TYPES[k]) for c, k in _COLUMNS[_check_table(table)]]


def _natural(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def table_files(folder: str | Path, table: str, *, plaintext: bool = False) -> list[Path]:
    """The input files of ``table`` in ``folder`` (``<table>.tbl*``), in natural order.

    With ``plaintext=True`` only ``<table>.tbl`` and dbgen's split parts ``<table>.tbl.<n>`` are
    returned, leaving out encrypted copies such as ``<table>.tbl.cbc``.
    """
    _check_table(table)
    base = Path(folder)
    found = [p for p in base.glob(TABLE_FILES[table]) if p.is_file()]
    if plaintext:
        rx = re.compile(rf"^{re.escape(table)}\.tbl(\.\d+)?$")
        found = [p for p in found if rx.match(p.name)]
    return sorted(found, key=_natural)
