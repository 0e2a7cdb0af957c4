"""What the TPC-H specification fixes about each of the 22 queries, independent of any engine.

For each query: its title, output columns (names and order as in the specification), ORDER BY keys,
LIMIT, which output columns are averages or ratios (compared with a looser tolerance), and the
substitution parameters. The parameters are the specification's validation values (qgen's defaults,
TPC-H 3.0.1 clause 2.4.x.4) -- the ones the official answer set was produced with. The only one that
depends on the scale factor is Q11's FRACTION = 0.0001 / SF (:func:`q11_fraction`).

Both the Spark DataFrame queries (:mod:`ppml.tpch.queries`) and the DuckDB oracle
(:mod:`ppml.tpch.oracle`) take their parameters from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

from ppml.errors import UsageError

__all__ = ["QuerySpec", "SPECS", "QUERY_NUMBERS", "q11_fraction", "query_label", "parse_query_numbers"]


@dataclass(frozen=True)
class QuerySpec:
    """Engine-independent facts about one TPC-H query."""

    number: int
    title: str
    columns: tuple[str, ...]
    #: ORDER BY keys as ``(output column, descending)``; empty for single-row queries.
    order_by: tuple[tuple[str, bool], ...] = ()
    limit: int | None = None
    #: Output columns that are averages or ratios of sums (looser comparison tolerance).
    averages: tuple[str, ...] = ()
    params: dict[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return query_label(self.number)


def _asc(*cols: str) -> tuple[tuple[str, bool], ...]:
    return tuple((c, False) for c in cols)


SPECS: dict[int, QuerySpec] = {s.number: s for s in [
    QuerySpec(1, "Pricing Summary Report",
              ("l_returnflag", "l_linestatus", "sum_qty", "sum_base_price", "sum_disc_price", "sum_charge",
               "avg_qty", "avg_price", "avg_disc", "count_order"),
              _asc("l_returnflag", "l_linestatus"),
              averages=("avg_qty", "avg_price", "avg_disc"),
              params={"DELTA": 90, "SHIPDATE_MAX": date(1998, 9, 2)}),
    QuerySpec(2, "Minimum Cost Supplier",
              ("s_acctbal", "s_name", "n_name", "p_partkey", "p_mfgr", "s_address", "s_phone", "s_comment"),
              (("s_acctbal", True), ("n_name", False), ("s_name", False), ("p_partkey", False)), limit=100,
              params={"SIZE": 15, "TYPE": "BRASS", "REGION": "EUROPE"}),
    QuerySpec(3, "Shipping Priority",
              ("l_orderkey", "revenue", "o_orderdate", "o_shippriority"),
              (("revenue", True), ("o_orderdate", False)), limit=10,
              params={"SEGMENT": "BUILDING", "DATE": date(1995, 3, 15)}),
    QuerySpec(4, "Order Priority Checking",
              ("o_orderpriority", "order_count"), _asc("o_orderpriority"),
              params={"DATE": date(1993, 7, 1), "DATE_END": date(1993, 10, 1)}),
    QuerySpec(5, "Local Supplier Volume",
              ("n_name", "revenue"), (("revenue", True),),
              params={"REGION": "ASIA", "DATE": date(1994, 1, 1), "DATE_END": date(1995, 1, 1)}),
    QuerySpec(6, "Forecasting Revenue Change",
              ("revenue",),
              params={"DATE": date(1994, 1, 1), "DATE_END": date(1995, 1, 1), "DISCOUNT": 0.06,
                      "DISCOUNT_LOW": 0.05, "DISCOUNT_HIGH": 0.07, "QUANTITY": 24}),
    QuerySpec(7, "Volume Shipping",
              ("supp_nation", "cust_nation", "l_year", "revenue"), _asc("supp_nation", "cust_nation", "l_year"),
              params={"NATION1": "FRANCE", "NATION2": "GERMANY",
                      "DATE_FROM": date(1995, 1, 1), "DATE_TO": date(1996, 12, 31)}),
    QuerySpec(8, "National Market Share",
              ("o_year", "mkt_share"), _asc("o_year"), averages=("mkt_share",),
              params={"NATION": "BRAZIL", "REGION": "AMERICA", "TYPE": "ECONOMY ANODIZED STEEL",
                      "DATE_FROM": date(1995, 1, 1), "DATE_TO": date(1996, 12, 31)}),
    QuerySpec(9, "Product Type Profit Measure",
              ("nation", "o_year", "sum_profit"), (("nation", False), ("o_year", True)),
              params={"COLOR": "green"}),
    QuerySpec(10, "Returned Item Reporting",
              ("c_custkey", "c_name", "revenue", "c_acctbal", "n_name", "c_address", "c_phone", "c_comment"),
              (("revenue", True),), limit=20,
              params={"DATE": date(1993, 10, 1), "DATE_END": date(1994, 1, 1)}),
    QuerySpec(11, "Important Stock Identification",
              ("ps_partkey", "value"), (("value", True),),
              params={"NATION": "GERMANY", "FRACTION": "0.0001 / SF"}),
    QuerySpec(12, "Shipping Modes and Order Priority",
              ("l_shipmode", "high_line_count", "low_line_count"), _asc("l_shipmode"),
              params={"SHIPMODE1": "MAIL", "SHIPMODE2": "SHIP", "DATE": date(1994, 1, 1),
                      "DATE_END": date(1995, 1, 1)}),
    QuerySpec(13, "Customer Distribution",
              ("c_count", "custdist"), (("custdist", True), ("c_count", True)),
              params={"WORD1": "special", "WORD2": "requests"}),
    QuerySpec(14, "Promotion Effect",
              ("promo_revenue",), averages=("promo_revenue",),
              params={"DATE": date(1995, 9, 1), "DATE_END": date(1995, 10, 1)}),
    QuerySpec(15, "Top Supplier",
              ("s_suppkey", "s_name", "s_address", "s_phone", "total_revenue"), _asc("s_suppkey"),
              params={"DATE": date(1996, 1, 1), "DATE_END": date(1996, 4, 1)}),
    QuerySpec(16, "Parts/Supplier Relationship",
              ("p_brand", "p_type", "p_size", "supplier_cnt"),
              (("supplier_cnt", True), ("p_brand", False), ("p_type", False), ("p_size", False)),
              params={"BRAND": "Brand#45", "TYPE": "MEDIUM POLISHED", "SIZES": (49, 14, 23, 45, 19, 3, 36, 9)}),
    QuerySpec(17, "Small-Quantity-Order Revenue",
              ("avg_yearly",), averages=("avg_yearly",),
              params={"BRAND": "Brand#23", "CONTAINER": "MED BOX"}),
    QuerySpec(18, "Large Volume Customer",
              ("c_name", "c_custkey", "o_orderkey", "o_orderdate", "o_totalprice", "sum(l_quantity)"),
              (("o_totalprice", True), ("o_orderdate", False)), limit=100,
              params={"QUANTITY": 300}),
    QuerySpec(19, "Discounted Revenue",
              ("revenue",),
              params={"QUANTITY1": 1, "QUANTITY2": 10, "QUANTITY3": 20,
                      "BRAND1": "Brand#12", "BRAND2": "Brand#23", "BRAND3": "Brand#34"}),
    QuerySpec(20, "Potential Part Promotion",
              ("s_name", "s_address"), _asc("s_name"),
              params={"COLOR": "forest", "DATE": date(1994, 1, 1), "DATE_END": date(1995, 1, 1),
                      "NATION": "CANADA"}),
    QuerySpec(21, "Suppliers Who Kept Orders Waiting",
              ("s_name", "numwait"), (("numwait", True), ("s_name", False)), limit=100,
              params={"NATION": "SAUDI ARABIA"}),
    QuerySpec(22, "Global Sales Opportunity",
              ("cntrycode", "numcust", "totacctbal"), _asc("cntrycode"),
              params={"CODES": ("13", "31", "23", "29", "30", "18", "17")}),
]}

QUERY_NUMBERS: tuple[int, ...] = tuple(range(1, 23))


def q11_fraction(scale: float | None) -> float:
    """Q11's FRACTION, 0.0001 / SF (clause 2.4.11.3), rounded to 10 significant digits.

    ``scale=None`` means SF 1 (the validation value 0.0001).
    """
    sf = 1.0 if scale is None else float(scale)
    if not sf > 0:
        raise UsageError(f"scale factor must be positive, not {scale!r}")
    return float(f"{0.0001 / sf:.10g}")


def query_label(n: int) -> str:
    """``Q01`` ... ``Q22``."""
    return f"Q{n:02d}"


def parse_query_numbers(items: Iterable[str | int] | None) -> list[int]:
    """Turn ``["1", "q6", "Q22", "3-5"]`` into query numbers; nothing (or ``None``) means all 22.

    Accepts numbers, ``Q``/``q`` prefixes, comma-separated lists and ranges. Duplicates are dropped,
    first-given order kept.
    """
    out: list[int] = []
    for item in items or ():
        for part in str(item).split(","):
            token = part.strip()
            if not token:
                continue
            m = re.fullmatch(r"[qQ]?0*(\d+)(?:\s*-\s*[qQ]?0*(\d+))?", token)
            if not m:
                raise UsageError(f"not a TPC-H query number: {token!r}", hint="use 1..22, Q01..Q22 or a range 3-5")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) else lo
            if lo > hi:
                lo, hi = hi, lo
            for n in range(lo, hi + 1):
                if n not in SPECS:
                    raise UsageError(f"no TPC-H query {n}", hint="queries are numbered 1..22")
                if n not in out:
                    out.append(n)
    return out or list(QUERY_NUMBERS)
