"""An independent oracle for TPC-H answers: DuckDB running the specification's SQL over ``.tbl`` files.

The 22 queries are the standard TPC-H SQL text (clause 2.4) with the validation substitution parameters,
kept as ``sql/q01.sql`` ... ``sql/q22.sql`` inside this package (Q15's view written as a common table
expression); only Q11's FRACTION, 0.0001 / SF, depends on the scale and is filled in by :func:`sql_text`.
The tables are loaded once per :class:`Oracle` with the specification's own types
(:func:`ppml.tpch.schema.duckdb_columns`: ``DECIMAL(15,2)`` money, ``INTEGER`` keys, ``BIGINT`` order
keys), so the oracle computes exact decimal sums where Spark uses doubles;
:func:`ppml.tpch.comparison.compare` allows for that when it checks an engine's answer against the oracle's.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ppml.errors import ConfigError, NotFoundError, UsageError
from ppml.tpch.schema import TABLE_NAMES, TRAILING_COLUMN, duckdb_columns, table_files
from ppml.tpch.spec import SPECS, q11_fraction

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow

__all__ = ["Oracle", "oracle_answer", "oracle_columns", "sql_text"]


@functools.cache
def _template(n: int) -> str:
    return resources.files(__package__).joinpath("sql", f"q{n:02d}.sql").read_text(encoding="utf-8").strip()


def sql_text(n: int, *, scale: float | None = None) -> str:
    """The specification's SQL of query ``n`` with every substitution parameter filled in.

    Parameters
    ----------
    n : int
        The query number, 1 to 22.
    scale : float, optional
        The scale factor, for Q11's FRACTION (0.0001 / SF); ``None`` means SF 1.

    Returns
    -------
    str
        The query text, ready for DuckDB.

    Raises
    ------
    UsageError
        If there is no query ``n`` or ``scale`` is not positive.
    """
    if n not in SPECS:
        raise UsageError(f"no TPC-H query {n!r}", hint="queries are numbered 1..22")
    text = _template(n)
    if n == 11:
        text = text.replace("{fraction}", f"{q11_fraction(scale):.10g}")
    return text


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Oracle:
    """A DuckDB connection holding the eight tables of one ``.tbl`` folder, loaded once.

    ``scale`` (for Q11) defaults to the one :func:`ppml.tpch.gen.generate` recorded in the folder, else 1.
    Safe to share between threads (queries are serialised).
    """

    def __init__(self, tbl_dir: str | Path, *, scale: float | None = None) -> None:
        try:
            import duckdb
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError("the TPC-H oracle needs duckdb", hint="pip install 'ppml[arrow]' (or duckdb)") from exc
        self.tbl_dir = Path(tbl_dir)
        if scale is None:
            from ppml.tpch.gen import read_scale

            scale = read_scale(self.tbl_dir)
        self.scale = scale
        files = {t: table_files(self.tbl_dir, t, plaintext=True) for t in TABLE_NAMES}
        missing = [t for t, f in files.items() if not f]
        if missing:
            raise NotFoundError(f"no {', '.join(t + '.tbl' for t in missing)} in {self.tbl_dir}",
                                hint="generate data with ppml.tpch.gen.generate (tpchgen-cli)")
        self._lock = threading.Lock()
        self._con = duckdb.connect(":memory:")
        self._con.execute("set enable_progress_bar = false")  # a library does not draw on the terminal
        self._columns: dict[int, list[str]] = {}
        for table in TABLE_NAMES:
            types = duckdb_columns(table)
            cols = types + [(TRAILING_COLUMN, "VARCHAR")]
            spec = "{" + ", ".join(f"{_quote(c)}: {_quote(t)}" for c, t in cols) + "}"
            paths = "[" + ", ".join(_quote(str(p)) for p in files[table]) + "]"
            names = ", ".join(c for c, _ in types)
            self._con.execute(
                f"create table {table} as select {names} from read_csv({paths}, delim='|', header=false, "
                f"quote='', escape='', auto_detect=false, columns={spec})")

    @classmethod
    def from_arrow(cls, tables: Mapping[str, pyarrow.Table], *, scale: float | None) -> Oracle:
        """An oracle over tables already in memory (e.g. decrypted without touching disk)."""
        import duckdb

        oracle = cls.__new__(cls)
        oracle.tbl_dir, oracle.scale = None, scale
        oracle._lock = threading.Lock()
        oracle._con = duckdb.connect(":memory:")
        oracle._columns = {}
        for table in TABLE_NAMES:
            oracle._con.register(f"arrow_{table}", tables[table])
            names = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in duckdb_columns(table))
            oracle._con.execute(f"create table {table} as select {names} from arrow_{table}")
            oracle._con.unregister(f"arrow_{table}")
        return oracle

    def answer(self, n: int) -> list[tuple]:
        """The rows of query ``n``."""
        with self._lock:
            cur = self._con.execute(sql_text(n, scale=self.scale))
            self._columns[n] = [d[0] for d in cur.description]
            return cur.fetchall()

    def columns(self, n: int) -> list[str]:
        """The output column names of query ``n`` as DuckDB reports them."""
        if n not in self._columns:
            with self._lock:
                cur = self._con.execute(f"select * from ({sql_text(n, scale=self.scale)}) limit 0")
                self._columns[n] = [d[0] for d in cur.description]
        return list(self._columns[n])

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> Oracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_ORACLES: dict[tuple[str, float | None], Oracle] = {}
_ORACLES_LOCK = threading.Lock()
_ORACLES_MAX = 4


def _oracle(tbl_dir: str | Path, scale: float | None) -> Oracle:
    key = (str(Path(tbl_dir).resolve()), scale)
    with _ORACLES_LOCK:
        oracle = _ORACLES.get(key)
        if oracle is None:
            while len(_ORACLES) >= _ORACLES_MAX:
                _ORACLES.pop(next(iter(_ORACLES))).close()
            oracle = _ORACLES[key] = Oracle(tbl_dir, scale=scale)
        return oracle


def oracle_answer(n: int, tbl_dir: str | Path, *, scale: float | None = None) -> list[tuple]:
    """The oracle's rows for query ``n`` over the ``.tbl`` files in ``tbl_dir``.

    The tables are loaded once per folder (and scale) and kept for the next queries.
    """
    return _oracle(tbl_dir, scale).answer(n)


def oracle_columns(n: int, tbl_dir: str | Path, *, scale: float | None = None) -> list[str]:
    """The oracle's output column names for query ``n``."""
    return _oracle(tbl_dir, scale).columns(n)
