"""The eight TPC-H tables as Spark DataFrames, by name: :class:`Tables`, and loading plaintext ``.tbl``.

A :class:`Tables` is a read-only mapping ``name -> DataFrame``. It is built either from ready DataFrames
or from a loader ``loader(table, columns) -> DataFrame`` called lazily, once per table, where ``columns``
is ``None`` (all) or the columns the caller needs -- a data source that takes a narrower schema can use it
(see :func:`ppml.tpch.schema.spark_schema` with ``columns``). The queries always select what they use
right after reading a table, so Spark prunes the rest anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ppml.errors import NotFoundError, UsageError
from ppml.tpch.schema import TABLE_NAMES, TRAILING_COLUMN, spark_schema, table_files

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["Tables", "Loader", "read_tbl", "tbl_tables", "read_tbl_arrow", "TBL_CSV_OPTIONS"]

Loader = Callable[[str, "Sequence[str] | None"], "DataFrame"]

#: Spark CSV reader options for dbgen ``.tbl`` files: ``|``-separated, no header, no quoting at all.
TBL_CSV_OPTIONS: dict[str, str] = {
    "sep": "|",
    "header": "false",
    "quote": "",          # empty string turns quoting off (dbgen text is never quoted)
    "escape": "\\",
    "dateFormat": "yyyy-MM-dd",
    "mode": "FAILFAST",   # a malformed row is an error, not a silent null
    "ignoreLeadingWhiteSpace": "false",
    "ignoreTrailingWhiteSpace": "false",
}


class Tables(Mapping[str, "DataFrame"]):
    """The TPC-H tables by name (``t["lineitem"]``), plus the scale factor Q11 needs.

    Parameters
    ----------
    frames
        Ready DataFrames by table name.
    loader
        ``loader(table, columns)`` returning the DataFrame of a table not in ``frames``; called at most
        once per table (``columns`` is ``None`` unless the Tables was :meth:`narrowed`).
    scale
        The data's scale factor, or ``None`` if unknown (Q11 then uses the SF 1 value, 0.0001).
    """

    def __init__(self, frames: Mapping[str, DataFrame] | None = None, *, loader: Loader | None = None,
                 scale: float | None = None, columns: Mapping[str, Sequence[str]] | None = None) -> None:
        frames = dict(frames or {})
        unknown = sorted(set(frames) - set(TABLE_NAMES))
        if unknown:
            raise UsageError(f"not TPC-H tables: {', '.join(unknown)}", hint=f"tables are: {', '.join(TABLE_NAMES)}")
        self._frames: dict[str, DataFrame] = frames
        self._loader = loader
        self.scale = None if scale is None else float(scale)
        self._columns = {k: list(v) for k, v in columns.items()} if columns is not None else None

    def _available(self) -> list[str]:
        if self._loader is not None:
            names = list(TABLE_NAMES)
        else:
            names = [n for n in TABLE_NAMES if n in self._frames]
        if self._columns is not None:
            names = [n for n in names if n in self._columns]
        return names

    def __getitem__(self, name: str) -> DataFrame:
        if name not in self._available():
            raise KeyError(name)
        df = self._frames.get(name)
        if df is None:
            assert self._loader is not None
            cols = self._columns.get(name) if self._columns is not None else None
            df = self._loader(name, cols)
            self._frames[name] = df
        elif self._columns is not None:
            df = df.select(*self._columns[name])
            self._frames[name] = df
        return df

    def __iter__(self) -> Iterator[str]:
        return iter(self._available())

    def __len__(self) -> int:
        return len(self._available())

    def __repr__(self) -> str:
        return f"Tables({', '.join(self._available())}; scale={self.scale})"

    def narrowed(self, columns: Mapping[str, Sequence[str]]) -> Tables:
        """A Tables holding only ``columns`` of each listed table (other tables are absent).

        DataFrames already loaded are narrowed with ``select``; tables still to load are loaded through
        the loader with ``columns`` passed on, so a data source can read just those.
        """
        frames = {name: df for name, df in self._frames.items() if name in columns}
        return Tables(frames, loader=self._loader, scale=self.scale, columns=columns)


def _is_url(folder: str | Path) -> bool:
    return isinstance(folder, str) and "://" in folder


def read_tbl(spark: SparkSession, folder: str | Path, table: str) -> DataFrame:
    """Read plaintext ``<table>.tbl*`` from ``folder`` with Spark's own CSV reader, typed per schema.py.

    The empty field after each row's trailing ``|`` is read as :data:`TRAILING_COLUMN` and dropped.
    ``folder`` may be a local path or a URL Spark can read (``abfss://...``, ``hdfs://...``); for local
    folders only plaintext parts are picked (``<table>.tbl`` and ``<table>.tbl.<n>``).
    """
    if _is_url(folder):
        paths = [f"{str(folder).rstrip('/')}/{table}.tbl*"]
    else:
        files = table_files(folder, table, plaintext=True)
        if not files:
            raise NotFoundError(f"no {table}.tbl file in {folder}",
                                hint="generate data with ppml.tpch.gen.generate (tpchgen-cli)")
        paths = [str(p) for p in files]
    reader = spark.read.schema(spark_schema(table, trailing=True)).options(**TBL_CSV_OPTIONS)
    return reader.csv(paths).drop(TRAILING_COLUMN)


def tbl_tables(spark: SparkSession, folder: str | Path, *, scale: float | None = None) -> Tables:
    """The eight tables of a plaintext ``.tbl`` folder, read lazily with :func:`read_tbl`.

    ``scale`` defaults to the one recorded by :func:`ppml.tpch.gen.generate` in ``folder``, if any.
    """
    if scale is None and not _is_url(folder):
        from ppml.tpch.gen import read_scale

        scale = read_scale(folder)

    def load(table: str, columns: Sequence[str] | None) -> DataFrame:
        df = read_tbl(spark, folder, table)
        return df if columns is None else df.select(*columns)

    return Tables(loader=load, scale=scale)



def read_tbl_arrow(paths: str | Path | Sequence[str | Path | BinaryIO], table: str,
                   columns: Sequence[str] | None = None) -> pyarrow.Table:
    """Read plaintext ``.tbl`` file(s) of ``table`` with pyarrow, typed exactly as :func:`arrow_schema`.

    ``columns`` keeps only those (in table order). Useful to feed a Python data source, which must yield
    batches whose schema equals Spark's exactly.
    """
    import pyarrow as pa
    from pyarrow import csv as pacsv

    from ppml.tpch.schema import _arrow_type, _pick, arrow_schema, column_names

    if isinstance(paths, (str, Path)):
        paths = [paths]
    names = column_names(table)
    wanted = [c for c, _ in _pick(table, columns)]
    read = pacsv.ReadOptions(column_names=names + [TRAILING_COLUMN], block_size=8 << 20)
    parse = pacsv.ParseOptions(delimiter="|", quote_char=False, escape_char=False, double_quote=False)
    types = {c: _arrow_type(k) for c, k in _pick(table, None)}
    convert = pacsv.ConvertOptions(column_types=types, include_columns=wanted, strings_can_be_null=False,
                                   quoted_strings_can_be_null=False)
    target = arrow_schema(table, wanted)
    parts = []
    for path in paths:
        try:
            source = path if hasattr(path, "read") else str(path)  # a path, or an open (decrypting) file
            parts.append(pacsv.read_csv(source, read_options=read, parse_options=parse,
                                        convert_options=convert).cast(target))
        except FileNotFoundError:
            raise NotFoundError(f"no such file: {path}") from None
    if not parts:
        return target.empty_table()
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)
