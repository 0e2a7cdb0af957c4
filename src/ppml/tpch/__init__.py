"""The TPC-H workload: data generation, the 22 queries as PySpark DataFrames, and a DuckDB oracle.

- :mod:`ppml.tpch.schema` -- the eight tables' columns, Spark and Arrow schemas, DuckDB types, ``.tbl`` file
  naming;
- :mod:`ppml.tpch.gen` -- ``generate(scale, out_dir)`` with tpchgen-cli;
- :mod:`ppml.tpch.spec` -- per-query output columns, ORDER BY, LIMIT and substitution parameters;
- :mod:`ppml.tpch.tables` -- :class:`Tables` (the tables by name) and Spark's reading of ``.tbl`` files;
- :mod:`ppml.tpch.queries` -- ``QUERIES``, ``COLUMNS_USED``, ``run_query`` (needs pyspark);
- :mod:`ppml.tpch.oracle` -- DuckDB running the specification's SQL (``sql/*.sql``; needs duckdb);
- :mod:`ppml.tpch.comparison` -- ``compare``, an engine's answer against the expected one, within tolerances.

Nothing here prints: functions return data and the command line presents it. Submodules needing pyspark
or duckdb are imported only when used.
"""

from __future__ import annotations

from ppml.tpch.schema import TABLE_FILES, TABLE_NAMES, arrow_schema, spark_schema, table_files
from ppml.tpch.spec import SPECS, parse_query_numbers

__all__ = [
    "TABLE_NAMES",
    "TABLE_FILES",
    "SPECS",
    "spark_schema",
    "arrow_schema",
    "table_files",
    "parse_query_numbers",
    "generate",
    "Tables",
    "QUERIES",
    "COLUMNS_USED",
    "run_query",
    "oracle_answer",
    "compare",
]

_LAZY = {
    "generate": "ppml.tpch.gen",
    "Tables": "ppml.tpch.tables",
    "QUERIES": "ppml.tpch.queries",
    "COLUMNS_USED": "ppml.tpch.queries",
    "run_query": "ppml.tpch.queries",
    "oracle_answer": "ppml.tpch.oracle",
    "compare": "ppml.tpch.comparison",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
