"""An independent oracle for TPC-H answers: DuckDB running the specification's SQL over ``.tbl`` files.

The 22 queries are the standard TPC-H SQL text with the validation substitution parameters (Q15's view
written as a common table expression, Q11's FRACTION = 0.0001 / SF). The tables are loaded once per
:class:`Oracle` with the specification's own types (``DECIMAL(15,2)`` money, ``INTEGER`` keys), so the
oracle computes exact decimal sums where Spark uses doubles; :func:`compare` allows for that.

:func:`compare` checks an engine's rows against the oracle's and returns human-readable mismatches such
as ``"Q05 row 3 column revenue: 1234.5 != 1234.6"`` (actual != expected, rows counted from 1); an empty
list means the answers agree.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import numbers
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ppml.errors import ConfigError, NotFoundError, UsageError
from ppml.tpch.schema import TABLE_NAMES, TRAILING_COLUMN, table_files
from ppml.tpch.spec import SPECS, QuerySpec, q11_fraction

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow

__all__ = ["Oracle", "oracle_answer", "oracle_columns", "compare", "SQL", "sql_text",
           "REL_TOL", "ABS_TOL", "AVG_REL_TOL"]

#: relative tolerance for sums and plain numbers
REL_TOL = 1e-6
#: absolute tolerance added for sums of doubles (well below a cent)
ABS_TOL = 1e-4
#: relative tolerance for averages and ratios (the usual tolerance for floating averages)
AVG_REL_TOL = 1e-4

# The specification's column types (clause 1.4.1): identifiers, integers, DECIMAL(15,2), fixed and
# variable text, dates.
_DUCK_TYPES: dict[str, list[tuple[str, str]]] = {
    "region": [("r_regionkey", "INTEGER"), ("r_name", "VARCHAR"), ("r_comment", "VARCHAR")],
    "nation": [("n_nationkey", "INTEGER"), ("n_name", "VARCHAR"), ("n_regionkey", "INTEGER"),
               ("n_comment", "VARCHAR")],
    "supplier": [("s_suppkey", "INTEGER"), ("s_name", "VARCHAR"), ("s_address", "VARCHAR"),
                 ("s_nationkey", "INTEGER"), ("s_phone", "VARCHAR"), ("s_acctbal", "DECIMAL(15,2)"),
                 ("s_comment", "VARCHAR")],
    "customer": [("c_custkey", "INTEGER"), ("c_name", "VARCHAR"), ("c_address", "VARCHAR"),
                 ("c_nationkey", "INTEGER"), ("c_phone", "VARCHAR"), ("c_acctbal", "DECIMAL(15,2)"),
                 ("c_mktsegment", "VARCHAR"), ("c_comment", "VARCHAR")],
    "part": [("p_partkey", "INTEGER"), ("p_name", "VARCHAR"), ("p_mfgr", "VARCHAR"), ("p_brand", "VARCHAR"),
             ("p_type", "VARCHAR"), ("p_size", "INTEGER"), ("p_container", "VARCHAR"),
             ("p_retailprice", "DECIMAL(15,2)"), ("p_comment", "VARCHAR")],
    "partsupp": [("ps_partkey", "INTEGER"), ("ps_suppkey", "INTEGER"), ("ps_availqty", "INTEGER"),
                 ("ps_supplycost", "DECIMAL(15,2)"), ("ps_comment", "VARCHAR")],
    "orders": [("o_orderkey", "BIGINT"), ("o_custkey", "INTEGER"), ("o_orderstatus", "VARCHAR"),
               ("o_totalprice", "DECIMAL(15,2)"), ("o_orderdate", "DATE"), ("o_orderpriority", "VARCHAR"),
               ("o_clerk", "VARCHAR"), ("o_shippriority", "INTEGER"), ("o_comment", "VARCHAR")],
    "lineitem": [("l_orderkey", "BIGINT"), ("l_partkey", "INTEGER"), ("l_suppkey", "INTEGER"),
                 ("l_linenumber", "INTEGER"), ("l_quantity", "DECIMAL(15,2)"),
                 ("l_extendedprice", "DECIMAL(15,2)"), ("l_discount", "DECIMAL(15,2)"),
                 ("l_tax", "DECIMAL(15,2)"), ("l_returnflag", "VARCHAR"), ("l_linestatus", "VARCHAR"),
                 ("l_shipdate", "DATE"), ("l_commitdate", "DATE"), ("l_receiptdate", "DATE"),
                 ("l_shipinstruct", "VARCHAR"), ("l_shipmode", "VARCHAR"), ("l_comment", "VARCHAR")],
}

#: The specification's query text (clause 2.4), validation parameters substituted; Q11 has ``{fraction}``.
SQL: dict[int, str] = {
    1: """
select l_returnflag, l_linestatus,
       sum(l_quantity) as sum_qty,
       sum(l_extendedprice) as sum_base_price,
       sum(l_extendedprice * (1 - l_discount)) as sum_disc_price,
       sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) as sum_charge,
       avg(l_quantity) as avg_qty,
       avg(l_extendedprice) as avg_price,
       avg(l_discount) as avg_disc,
       count(*) as count_order
from lineitem
where l_shipdate <= date '1998-12-01' - interval '90' day
group by l_returnflag, l_linestatus
order by l_returnflag, l_linestatus""",
    2: """
select s_acctbal, s_name, n_name, p_partkey, p_mfgr, s_address, s_phone, s_comment
from part, supplier, partsupp, nation, region
where p_partkey = ps_partkey and s_suppkey = ps_suppkey and p_size = 15 and p_type like '%BRASS'
  and s_nationkey = n_nationkey and n_regionkey = r_regionkey and r_name = 'EUROPE'
  and ps_supplycost = (
      select min(ps_supplycost)
      from partsupp, supplier, nation, region
      where p_partkey = ps_partkey and s_suppkey = ps_suppkey and s_nationkey = n_nationkey
        and n_regionkey = r_regionkey and r_name = 'EUROPE')
order by s_acctbal desc, n_name, s_name, p_partkey
limit 100""",
    3: """
select l_orderkey, sum(l_extendedprice * (1 - l_discount)) as revenue, o_orderdate, o_shippriority
from customer, orders, lineitem
where c_mktsegment = 'BUILDING' and c_custkey = o_custkey and l_orderkey = o_orderkey
  and o_orderdate < date '1995-03-15' and l_shipdate > date '1995-03-15'
group by l_orderkey, o_orderdate, o_shippriority
order by revenue desc, o_orderdate
limit 10""",
    4: """
select o_orderpriority, count(*) as order_count
from orders
where o_orderdate >= date '1993-07-01' and o_orderdate < date '1993-07-01' + interval '3' month
  and exists (select * from lineitem where l_orderkey = o_orderkey and l_commitdate < l_receiptdate)
group by o_orderpriority
order by o_orderpriority""",
    5: """
select n_name, sum(l_extendedprice * (1 - l_discount)) as revenue
from customer, orders, lineitem, supplier, nation, region
where c_custkey = o_custkey and l_orderkey = o_orderkey and l_suppkey = s_suppkey
  and c_nationkey = s_nationkey and s_nationkey = n_nationkey and n_regionkey = r_regionkey
  and r_name = 'ASIA' and o_orderdate >= date '1994-01-01'
  and o_orderdate < date '1994-01-01' + interval '1' year
group by n_name
order by revenue desc""",
    6: """
select sum(l_extendedprice * l_discount) as revenue
from lineitem
where l_shipdate >= date '1994-01-01' and l_shipdate < date '1994-01-01' + interval '1' year
  and l_discount between 0.06 - 0.01 and 0.06 + 0.01 and l_quantity < 24""",
    7: """
select supp_nation, cust_nation, l_year, sum(volume) as revenue
from (
    select n1.n_name as supp_nation, n2.n_name as cust_nation,
           extract(year from l_shipdate) as l_year, l_extendedprice * (1 - l_discount) as volume
    from supplier, lineitem, orders, customer, nation n1, nation n2
    where s_suppkey = l_suppkey and o_orderkey = l_orderkey and c_custkey = o_custkey
      and s_nationkey = n1.n_nationkey and c_nationkey = n2.n_nationkey
      and ((n1.n_name = 'FRANCE' and n2.n_name = 'GERMANY') or (n1.n_name = 'GERMANY' and n2.n_name = 'FRANCE'))
      and l_shipdate between date '1995-01-01' and date '1996-12-31'
) as shipping
group by supp_nation, cust_nation, l_year
order by supp_nation, cust_nation, l_year""",
    8: """
select o_year, sum(case when nation = 'BRAZIL' then volume else 0 end) / sum(volume) as mkt_share
from (
    select extract(year from o_orderdate) as o_year, l_extendedprice * (1 - l_discount) as volume,
           n2.n_name as nation
    from part, supplier, lineitem, orders, customer, nation n1, nation n2, region
    where p_partkey = l_partkey and s_suppkey = l_suppkey and l_orderkey = o_orderkey
      and o_custkey = c_custkey and c_nationkey = n1.n_nationkey and n1.n_regionkey = r_regionkey
      and r_name = 'AMERICA' and s_nationkey = n2.n_nationkey
      and o_orderdate between date '1995-01-01' and date '1996-12-31'
      and p_type = 'ECONOMY ANODIZED STEEL'
) as all_nations
group by o_year
order by o_year""",
    9: """
select nation, o_year, sum(amount) as sum_profit
from (
    select n_name as nation, extract(year from o_orderdate) as o_year,
           l_extendedprice * (1 - l_discount) - ps_supplycost * l_quantity as amount
    from part, supplier, lineitem, partsupp, orders, nation
    where s_suppkey = l_suppkey and ps_suppkey = l_suppkey and ps_partkey = l_partkey
      and p_partkey = l_partkey and o_orderkey = l_orderkey and s_nationkey = n_nationkey
      and p_name like '%green%'
) as profit
group by nation, o_year
order by nation, o_year desc""",
    10: """
select c_custkey, c_name, sum(l_extendedprice * (1 - l_discount)) as revenue, c_acctbal, n_name,
       c_address, c_phone, c_comment
from customer, orders, lineitem, nation
where c_custkey = o_custkey and l_orderkey = o_orderkey and o_orderdate >= date '1993-10-01'
  and o_orderdate < date '1993-10-01' + interval '3' month and l_returnflag = 'R'
  and c_nationkey = n_nationkey
group by c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment
order by revenue desc
limit 20""",
    11: """
select ps_partkey, sum(ps_supplycost * ps_availqty) as value
from partsupp, supplier, nation
where ps_suppkey = s_suppkey and s_nationkey = n_nationkey and n_name = 'GERMANY'
group by ps_partkey
having sum(ps_supplycost * ps_availqty) > (
    select sum(ps_supplycost * ps_availqty) * {fraction}
    from partsupp, supplier, nation
    where ps_suppkey = s_suppkey and s_nationkey = n_nationkey and n_name = 'GERMANY')
order by value desc""",
    12: """
select l_shipmode,
       sum(case when o_orderpriority = '1-URGENT' or o_orderpriority = '2-HIGH' then 1 else 0 end)
           as high_line_count,
       sum(case when o_orderpriority <> '1-URGENT' and o_orderpriority <> '2-HIGH' then 1 else 0 end)
           as low_line_count
from orders, lineitem
where o_orderkey = l_orderkey and l_shipmode in ('MAIL', 'SHIP') and l_commitdate < l_receiptdate
  and l_shipdate < l_commitdate and l_receiptdate >= date '1994-01-01'
  and l_receiptdate < date '1994-01-01' + interval '1' year
group by l_shipmode
order by l_shipmode""",
    13: """
select c_count, count(*) as custdist
from (
    select c_custkey, count(o_orderkey)
    from customer left outer join orders on c_custkey = o_custkey and o_comment not like '%special%requests%'
    group by c_custkey
) as c_orders (c_custkey, c_count)
group by c_count
order by custdist desc, c_count desc""",
    14: """
select 100.00 * sum(case when p_type like 'PROMO%' then l_extendedprice * (1 - l_discount) else 0 end)
       / sum(l_extendedprice * (1 - l_discount)) as promo_revenue
from lineitem, part
where l_partkey = p_partkey and l_shipdate >= date '1995-09-01'
  and l_shipdate < date '1995-09-01' + interval '1' month""",
    15: """
with revenue0 (supplier_no, total_revenue) as (
    select l_suppkey, sum(l_extendedprice * (1 - l_discount))
    from lineitem
    where l_shipdate >= date '1996-01-01' and l_shipdate < date '1996-01-01' + interval '3' month
    group by l_suppkey)
select s_suppkey, s_name, s_address, s_phone, total_revenue
from supplier, revenue0
where s_suppkey = supplier_no and total_revenue = (select max(total_revenue) from revenue0)
order by s_suppkey""",
    16: """
select p_brand, p_type, p_size, count(distinct ps_suppkey) as supplier_cnt
from partsupp, part
where p_partkey = ps_partkey and p_brand <> 'Brand#45' and p_type not like 'MEDIUM POLISHED%'
  and p_size in (49, 14, 23, 45, 19, 3, 36, 9)
  and ps_suppkey not in (select s_suppkey from supplier where s_comment like '%Customer%Complaints%')
group by p_brand, p_type, p_size
order by supplier_cnt desc, p_brand, p_type, p_size""",
    17: """
select sum(l_extendedprice) / 7.0 as avg_yearly
from lineitem, part
where p_partkey = l_partkey and p_brand = 'Brand#23' and p_container = 'MED BOX'
  and l_quantity < (select 0.2 * avg(l_quantity) from lineitem where l_partkey = p_partkey)""",
    18: """
select c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice, sum(l_quantity)
from customer, orders, lineitem
where o_orderkey in (select l_orderkey from lineitem group by l_orderkey having sum(l_quantity) > 300)
  and c_custkey = o_custkey and o_orderkey = l_orderkey
group by c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice
order by o_totalprice desc, o_orderdate
limit 100""",
    19: """
select sum(l_extendedprice * (1 - l_discount)) as revenue
from lineitem, part
where (p_partkey = l_partkey and p_brand = 'Brand#12'
       and p_container in ('SM CASE', 'SM BOX', 'SM PACK', 'SM PKG')
       and l_quantity >= 1 and l_quantity <= 1 + 10 and p_size between 1 and 5
       and l_shipmode in ('AIR', 'AIR REG') and l_shipinstruct = 'DELIVER IN PERSON')
   or (p_partkey = l_partkey and p_brand = 'Brand#23'
       and p_container in ('MED BAG', 'MED BOX', 'MED PKG', 'MED PACK')
       and l_quantity >= 10 and l_quantity <= 10 + 10 and p_size between 1 and 10
       and l_shipmode in ('AIR', 'AIR REG') and l_shipinstruct = 'DELIVER IN PERSON')
   or (p_partkey = l_partkey and p_brand = 'Brand#34'
       and p_container in ('LG CASE', 'LG BOX', 'LG PACK', 'LG PKG')
       and l_quantity >= 20 and l_quantity <= 20 + 10 and p_size between 1 and 15
       and l_shipmode in ('AIR', 'AIR REG') and l_shipinstruct = 'DELIVER IN PERSON')""",
    20: """
select s_name, s_address
from supplier, nation
where s_suppkey in (
        select ps_suppkey from partsupp
        where ps_partkey in (select p_partkey from part where p_name like 'forest%')
          and ps_availqty > (
              select 0.5 * sum(l_quantity) from lineitem
              where l_partkey = ps_partkey and l_suppkey = ps_suppkey
                and l_shipdate >= date '1994-01-01' and l_shipdate < date '1994-01-01' + interval '1' year))
  and s_nationkey = n_nationkey and n_name = 'CANADA'
order by s_name""",
    21: """
select s_name, count(*) as numwait
from supplier, lineitem l1, orders, nation
where s_suppkey = l1.l_suppkey and o_orderkey = l1.l_orderkey and o_orderstatus = 'F'
  and l1.l_receiptdate > l1.l_commitdate
  and exists (select * from lineitem l2 where l2.l_orderkey = l1.l_orderkey and l2.l_suppkey <> l1.l_suppkey)
  and not exists (select * from lineitem l3 where l3.l_orderkey = l1.l_orderkey
                  and l3.l_suppkey <> l1.l_suppkey and l3.l_receiptdate > l3.l_commitdate)
  and s_nationkey = n_nationkey and n_name = 'SAUDI ARABIA'
group by s_name
order by numwait desc, s_name
limit 100""",
    22: """
select cntrycode, count(*) as numcust, sum(c_acctbal) as totacctbal
from (
    select substring(c_phone from 1 for 2) as cntrycode, c_acctbal
    from customer
    where substring(c_phone from 1 for 2) in ('13', '31', '23', '29', '30', '18', '17')
      and c_acctbal > (
          select avg(c_acctbal) from customer
          where c_acctbal > 0.00
            and substring(c_phone from 1 for 2) in ('13', '31', '23', '29', '30', '18', '17'))
      and not exists (select * from orders where o_custkey = c_custkey)
) as custsale
group by cntrycode
order by cntrycode""",
}


def sql_text(n: int, *, scale: float | None = None) -> str:
    """The SQL of query ``n`` with every parameter substituted (Q11's FRACTION from ``scale``)."""
    if n not in SQL:
        raise UsageError(f"no TPC-H query {n!r}", hint="queries are numbered 1..22")
    text = SQL[n].strip()
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
            cols = _DUCK_TYPES[table] + [(TRAILING_COLUMN, "VARCHAR")]
            spec = "{" + ", ".join(f"{_quote(c)}: {_quote(t)}" for c, t in cols) + "}"
            paths = "[" + ", ".join(_quote(str(p)) for p in files[table]) + "]"
            names = ", ".join(c for c, _ in _DUCK_TYPES[table])
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
            names = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in _DUCK_TYPES[table])
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


# ------------------------------------------------------------------------------------------ comparison

def _norm(value: object) -> object:
    """Engine-neutral form of a value: dates as ISO strings, decimals as floats, ints as ints."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, _dt.datetime):
        return value.date().isoformat() if value.time() == _dt.time() else value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _close(a: object, e: object, rel: float, abs_: float) -> bool:
    if a is None or e is None:
        return a is None and e is None
    a_num = isinstance(a, (int, float)) and not isinstance(a, bool)
    e_num = isinstance(e, (int, float)) and not isinstance(e, bool)
    if a_num and e_num:
        if isinstance(a, int) and isinstance(e, int):
            return a == e
        if math.isnan(a) or math.isnan(e):  # type: ignore[arg-type]
            return math.isnan(a) and math.isnan(e)  # type: ignore[arg-type]
        return math.isclose(a, e, rel_tol=rel, abs_tol=abs_)  # type: ignore[arg-type]
    return a == e


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


class _Comparer:
    def __init__(self, spec: QuerySpec, rel_tol: float, abs_tol: float, avg_rel_tol: float,
                 max_messages: int) -> None:
        self.spec = spec
        self.cols = list(spec.columns)
        self.tol = [(avg_rel_tol, abs_tol) if c in spec.averages else (rel_tol, abs_tol) for c in self.cols]
        self.messages: list[str] = []
        self.max_messages = max_messages
        self.dropped = 0

    def say(self, text: str) -> None:
        if len(self.messages) < self.max_messages:
            self.messages.append(f"{self.spec.label} {text}")
        else:
            self.dropped += 1

    def same(self, i: int, a: object, e: object) -> bool:
        rel, abs_ = self.tol[i]
        return _close(a, e, rel, abs_)

    def row_equal(self, a: tuple, e: tuple, cols: Sequence[int]) -> bool:
        return all(self.same(i, a[i], e[i]) for i in cols)

    def report_row(self, row_no: int, a: tuple, e: tuple, cols: Sequence[int]) -> None:
        for i in cols:
            if not self.same(i, a[i], e[i]):
                self.say(f"row {row_no} column {self.cols[i]}: {_show(a[i])} != {_show(e[i])}")

    def describe(self, row: tuple) -> str:
        return ", ".join(f"{c}={_show(v)}" for c, v in zip(self.cols, row))

    @staticmethod
    def _bucket_key(row: tuple, cols: Sequence[int]) -> tuple:
        key = []
        for i in cols:
            v = row[i]
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = float(f"{float(v):.5g}")
            key.append((type(v).__name__ if not isinstance(v, (int, float)) else "num", v))
        return tuple(key)

    def match(self, exp: list[tuple[int, tuple]], act: list[tuple], cols: Sequence[int]) -> None:
        """Match rows as multisets; report unmatched ones (``exp`` carries 1-based row numbers)."""
        # 1. cheap pairing of rows whose rounded values agree, checked with the real tolerance
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for j, a in enumerate(act):
            buckets[self._bucket_key(a, cols)].append(j)
        used = [False] * len(act)
        left_exp: list[tuple[int, tuple]] = []
        for row_no, e in exp:
            cands = buckets.get(self._bucket_key(e, cols), [])
            for k, j in enumerate(cands):
                if self.row_equal(act[j], e, cols):
                    used[j] = True
                    del cands[k]
                    break
            else:
                left_exp.append((row_no, e))
        left_act = [j for j in range(len(act)) if not used[j]]
        # 2. rows near a rounding boundary: pair by tolerance (quadratic, but only over the leftovers)
        if left_exp and left_act and len(left_exp) * len(left_act) <= 4_000_000:
            still: list[tuple[int, tuple]] = []
            for row_no, e in left_exp:
                for k, j in enumerate(left_act):
                    if self.row_equal(act[j], e, cols):
                        del left_act[k]
                        break
                else:
                    still.append((row_no, e))
            left_exp = still
        # 3. what is left differs: pair in order and name the columns, then extra/missing rows
        for (row_no, e), j in zip(left_exp, left_act):
            self.report_row(row_no, act[j], e, cols)
        for row_no, e in left_exp[len(left_act):]:
            self.say(f"row {row_no} missing from the answer: {self.describe(e)}")
        for j in left_act[len(left_exp):]:
            self.say(f"unexpected row: {self.describe(act[j])}")

    def run(self, actual: list[tuple], expected: list[tuple]) -> list[str]:
        ncols = len(self.cols)
        for name, rows in (("answer", actual), ("expected answer", expected)):
            for k, r in enumerate(rows, 1):
                if len(r) != ncols:
                    self.say(f"row {k} of the {name} has {len(r)} columns, expected {ncols} "
                             f"({', '.join(self.cols)})")
                    return self.finish()
        all_cols = list(range(ncols))
        if len(actual) != len(expected):
            self.say(f"row count: {len(actual)} != {len(expected)}")
            self.match(list(enumerate(expected, 1)), actual, all_cols)
            return self.finish()
        if not self.spec.order_by:
            self.match(list(enumerate(expected, 1)), actual, all_cols)
            return self.finish()
        # Rows with equal ORDER BY keys may come in any order: compare each run of equal keys as a
        # multiset. When LIMIT cut the answer, the last run may continue past the cut (even if only one of
        # its rows made it in) and hold different, equally valid rows: only its keys must agree.
        key_idx = [self.cols.index(c) for c, _ in self.spec.order_by]
        groups: list[list[int]] = []
        for k, e in enumerate(expected):
            if groups and self.row_equal(expected[groups[-1][-1]], e, key_idx):
                groups[-1].append(k)
            else:
                groups.append([k])
        cut = self.spec.limit is not None and len(expected) >= self.spec.limit
        for g, members in enumerate(groups):
            cols = key_idx if (cut and g == len(groups) - 1) else all_cols
            exp = [(k + 1, expected[k]) for k in members]
            act = [actual[k] for k in members]
            if all(self.row_equal(a, e, cols) for a, (_, e) in zip(act, exp)):
                continue
            if len(members) == 1:
                self.report_row(members[0] + 1, act[0], exp[0][1], cols)
            else:
                self.match(exp, act, cols)
        return self.finish()

    def finish(self) -> list[str]:
        if self.dropped:
            self.messages.append(f"{self.spec.label} ... and {self.dropped} more mismatches")
        return self.messages


def compare(n: int, actual_rows: Iterable[Sequence[object]], expected_rows: Iterable[Sequence[object]], *,
            actual_columns: Sequence[str] | None = None, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL,
            avg_rel_tol: float = AVG_REL_TOL, max_messages: int = 50) -> list[str]:
    """Mismatches between an engine's answer to query ``n`` and the expected one; ``[]`` if they agree.

    Each message names the query, row (from 1) and column: ``"Q05 row 3 column revenue: 1234.5 != 1234.6"``
    (actual != expected). Numbers are compared with ``rel_tol`` plus ``abs_tol`` (``avg_rel_tol`` for
    averages and ratios), integers exactly, dates and date strings by their ISO form. Rows whose ORDER BY
    keys are equal may come in any order; when LIMIT cuts through a run of equal keys, only the keys of
    that run are compared. Row counts are compared, and ``actual_columns`` (e.g. ``df.columns``), when
    given, must equal the specification's output columns.
    """
    if n not in SPECS:
        raise UsageError(f"no TPC-H query {n!r}", hint="queries are numbered 1..22")
    spec = SPECS[n]
    comparer = _Comparer(spec, rel_tol, abs_tol, avg_rel_tol, max_messages)
    if actual_columns is not None and list(actual_columns) != list(spec.columns):
        comparer.say(f"columns: {list(actual_columns)} != {list(spec.columns)}")
    actual = [tuple(_norm(v) for v in row) for row in actual_rows]
    expected = [tuple(_norm(v) for v in row) for row in expected_rows]
    return comparer.run(actual, expected)
