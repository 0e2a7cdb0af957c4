"""The 22 TPC-H queries written with the PySpark DataFrame API (no SQL strings).

Each query is a function ``qNN(t) -> DataFrame`` taking a mapping of the TPC-H tables by name
(:class:`ppml.tpch.tables.Tables`, or any ``Mapping[str, DataFrame]``). Parameters are the
specification's validation values (:mod:`ppml.tpch.spec`); output columns, their order, ORDER BY and
LIMIT are as in the specification.

Every query declares, per table, the columns it reads (:data:`COLUMNS_USED`) and receives each table
already narrowed to those columns: a query cannot touch a column it did not declare, and Spark's column
pruning sees a projection right on top of every scan. A data source that takes a narrower schema can
read just ``COLUMNS_USED[n][table]`` (see :meth:`ppml.tpch.tables.Tables.narrowed`).

Plans are written for Spark: filter each table before joining, join small filtered dimensions first,
and replace correlated subqueries by aggregations and semi/anti joins (Q2/Q17 use a window, Q15 compares
each supplier's revenue with a window maximum computed over the same rows, so a floating-point maximum
always finds its own row).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F

from ppml.errors import PpmlError, UsageError
from ppml.tpch.schema import column_names
from ppml.tpch.spec import SPECS, q11_fraction, query_label

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pyspark.sql import DataFrame

__all__ = ["QUERIES", "COLUMNS_USED", "run_query"] + [f"q{n:02d}" for n in range(1, 23)]

Query = Callable[[Mapping[str, "DataFrame"]], "DataFrame"]

#: query number -> query function
QUERIES: dict[int, Query] = {}
#: query number -> {table: [columns the query reads, in table order]}
COLUMNS_USED: dict[int, dict[str, list[str]]] = {}


@dataclass(frozen=True)
class _Ctx:
    params: dict[str, object]
    scale: float | None


def _c(name: str):
    return F.col(name)


def _volume():
    return _c("l_extendedprice") * (1 - _c("l_discount"))


def _query(n: int, **inputs: Sequence[str]) -> Callable[[Callable[..., DataFrame]], Query]:
    """Register query ``n`` reading ``inputs`` (table -> columns); the body gets the narrowed tables."""
    spec = SPECS[n]
    for table, cols in inputs.items():
        order = column_names(table)  # also checks table and column names at import time
        unknown = [c for c in cols if c not in order]
        if unknown:  # pragma: no cover - programming error
            raise AssertionError(f"Q{n:02d}: {table} has no column {unknown}")

    used = {table: [c for c in column_names(table) if c in set(cols)] for table, cols in inputs.items()}

    def register(body: Callable[..., DataFrame]) -> Query:
        def query(t: Mapping[str, DataFrame]) -> DataFrame:
            frames = {}
            for table, cols in used.items():
                try:
                    df = t[table]
                except KeyError:
                    raise UsageError(f"{spec.label} needs table {table}, which was not given",
                                     hint=f"{spec.label} reads {', '.join(used)}") from None
                frames[table] = df.select(*cols)
            ctx = _Ctx(params=dict(spec.params), scale=getattr(t, "scale", None))
            out = body(ctx, **frames)
            if out.columns != list(spec.columns):  # pragma: no cover - programming error
                raise PpmlError(f"{spec.label} produced columns {out.columns}, expected {list(spec.columns)}")
            return out

        query.__name__ = query.__qualname__ = body.__name__
        query.__doc__ = body.__doc__
        query.__module__ = body.__module__
        QUERIES[n] = query
        COLUMNS_USED[n] = {table: list(cols) for table, cols in used.items()}
        return query

    return register


# --------------------------------------------------------------------------------------------- Q1 - Q5

@_query(1, lineitem=["l_quantity", "l_extendedprice", "l_discount", "l_tax", "l_returnflag", "l_linestatus",
                     "l_shipdate"])
def q01(p: _Ctx, lineitem: DataFrame) -> DataFrame:
    """Q1 Pricing Summary Report (DELTA = 90 days)."""
    disc_price = _volume()
    return (lineitem
            .filter(_c("l_shipdate") <= F.lit(p.params["SHIPDATE_MAX"]))
            .groupBy("l_returnflag", "l_linestatus")
            .agg(F.sum("l_quantity").alias("sum_qty"),
                 F.sum("l_extendedprice").alias("sum_base_price"),
                 F.sum(disc_price).alias("sum_disc_price"),
                 F.sum(disc_price * (1 + _c("l_tax"))).alias("sum_charge"),
                 F.avg("l_quantity").alias("avg_qty"),
                 F.avg("l_extendedprice").alias("avg_price"),
                 F.avg("l_discount").alias("avg_disc"),
                 F.count(F.lit(1)).alias("count_order"))
            .orderBy("l_returnflag", "l_linestatus"))


@_query(2, region=["r_regionkey", "r_name"], nation=["n_nationkey", "n_name", "n_regionkey"],
        supplier=["s_suppkey", "s_name", "s_address", "s_nationkey", "s_phone", "s_acctbal", "s_comment"],
        part=["p_partkey", "p_mfgr", "p_type", "p_size"],
        partsupp=["ps_partkey", "ps_suppkey", "ps_supplycost"])
def q02(p: _Ctx, region: DataFrame, nation: DataFrame, supplier: DataFrame, part: DataFrame,
        partsupp: DataFrame) -> DataFrame:
    """Q2 Minimum Cost Supplier (SIZE = 15, TYPE = BRASS, REGION = EUROPE)."""
    nations = (region.filter(_c("r_name") == p.params["REGION"])
               .join(nation, _c("r_regionkey") == _c("n_regionkey"))
               .select("n_nationkey", "n_name"))
    suppliers = supplier.join(nations, _c("s_nationkey") == _c("n_nationkey"))
    parts = (part.filter((_c("p_size") == p.params["SIZE"]) & _c("p_type").like(f"%{p.params['TYPE']}"))
             .select("p_partkey", "p_mfgr"))
    # The subquery's minimum is over this part's suppliers in the region: exactly the candidate rows.
    offers = (parts.join(partsupp, _c("p_partkey") == _c("ps_partkey"))
              .join(suppliers, _c("ps_suppkey") == _c("s_suppkey"))
              .withColumn("min_cost", F.min("ps_supplycost").over(Window.partitionBy("ps_partkey"))))
    return (offers.filter(_c("ps_supplycost") == _c("min_cost"))
            .orderBy(_c("s_acctbal").desc(), "n_name", "s_name", "p_partkey")
            .limit(100)
            .select("s_acctbal", "s_name", "n_name", "p_partkey", "p_mfgr", "s_address", "s_phone", "s_comment"))


@_query(3, customer=["c_custkey", "c_mktsegment"],
        orders=["o_orderkey", "o_custkey", "o_orderdate", "o_shippriority"],
        lineitem=["l_orderkey", "l_extendedprice", "l_discount", "l_shipdate"])
def q03(p: _Ctx, customer: DataFrame, orders: DataFrame, lineitem: DataFrame) -> DataFrame:
    """Q3 Shipping Priority (SEGMENT = BUILDING, DATE = 1995-03-15)."""
    day = F.lit(p.params["DATE"])
    customers = customer.filter(_c("c_mktsegment") == p.params["SEGMENT"]).select("c_custkey")
    orders_ = orders.filter(_c("o_orderdate") < day)
    lines = lineitem.filter(_c("l_shipdate") > day)
    return (customers.join(orders_, _c("c_custkey") == _c("o_custkey"))
            .join(lines, _c("l_orderkey") == _c("o_orderkey"))
            .groupBy("l_orderkey", "o_orderdate", "o_shippriority")
            .agg(F.sum(_volume()).alias("revenue"))
            .orderBy(_c("revenue").desc(), "o_orderdate")
            .limit(10)
            .select("l_orderkey", "revenue", "o_orderdate", "o_shippriority"))


@_query(4, orders=["o_orderkey", "o_orderdate", "o_orderpriority"],
        lineitem=["l_orderkey", "l_commitdate", "l_receiptdate"])
def q04(p: _Ctx, orders: DataFrame, lineitem: DataFrame) -> DataFrame:
    """Q4 Order Priority Checking (DATE = 1993-07-01)."""
    orders_ = orders.filter((_c("o_orderdate") >= F.lit(p.params["DATE"]))
                            & (_c("o_orderdate") < F.lit(p.params["DATE_END"])))
    late = lineitem.filter(_c("l_commitdate") < _c("l_receiptdate")).select("l_orderkey")
    return (orders_.join(late, _c("o_orderkey") == _c("l_orderkey"), "left_semi")
            .groupBy("o_orderpriority")
            .agg(F.count(F.lit(1)).alias("order_count"))
            .orderBy("o_orderpriority"))


@_query(5, customer=["c_custkey", "c_nationkey"], orders=["o_orderkey", "o_custkey", "o_orderdate"],
        lineitem=["l_orderkey", "l_suppkey", "l_extendedprice", "l_discount"],
        supplier=["s_suppkey", "s_nationkey"], nation=["n_nationkey", "n_name", "n_regionkey"],
        region=["r_regionkey", "r_name"])
def q05(p: _Ctx, customer: DataFrame, orders: DataFrame, lineitem: DataFrame, supplier: DataFrame,
        nation: DataFrame, region: DataFrame) -> DataFrame:
    """Q5 Local Supplier Volume (REGION = ASIA, DATE = 1994-01-01)."""
    nations = (region.filter(_c("r_name") == p.params["REGION"])
               .join(nation, _c("r_regionkey") == _c("n_regionkey"))
               .select("n_nationkey", "n_name"))
    suppliers = supplier.join(nations, _c("s_nationkey") == _c("n_nationkey")).select("s_suppkey", "s_nationkey",
                                                                                      "n_name")
    orders_ = orders.filter((_c("o_orderdate") >= F.lit(p.params["DATE"]))
                            & (_c("o_orderdate") < F.lit(p.params["DATE_END"])))
    return (customer.join(orders_, _c("c_custkey") == _c("o_custkey"))
            .join(lineitem, _c("l_orderkey") == _c("o_orderkey"))
            .join(suppliers, (_c("l_suppkey") == _c("s_suppkey")) & (_c("c_nationkey") == _c("s_nationkey")))
            .groupBy("n_name")
            .agg(F.sum(_volume()).alias("revenue"))
            .orderBy(_c("revenue").desc()))


# -------------------------------------------------------------------------------------------- Q6 - Q10

@_query(6, lineitem=["l_quantity", "l_extendedprice", "l_discount", "l_shipdate"])
def q06(p: _Ctx, lineitem: DataFrame) -> DataFrame:
    """Q6 Forecasting Revenue Change (DATE = 1994-01-01, DISCOUNT = 0.06, QUANTITY = 24)."""
    # The bounds are the literals 0.05 and 0.07: computing 0.06 -/+ 0.01 in floating point would give
    # 0.049999... and 0.069999... and drop every row with a 7 % discount.
    return (lineitem
            .filter((_c("l_shipdate") >= F.lit(p.params["DATE"])) & (_c("l_shipdate") < F.lit(p.params["DATE_END"]))
                    & _c("l_discount").between(p.params["DISCOUNT_LOW"], p.params["DISCOUNT_HIGH"])
                    & (_c("l_quantity") < p.params["QUANTITY"]))
            .agg(F.sum(_c("l_extendedprice") * _c("l_discount")).alias("revenue")))


@_query(7, supplier=["s_suppkey", "s_nationkey"],
        lineitem=["l_orderkey", "l_suppkey", "l_extendedprice", "l_discount", "l_shipdate"],
        orders=["o_orderkey", "o_custkey"], customer=["c_custkey", "c_nationkey"],
        nation=["n_nationkey", "n_name"])
def q07(p: _Ctx, supplier: DataFrame, lineitem: DataFrame, orders: DataFrame, customer: DataFrame,
        nation: DataFrame) -> DataFrame:
    """Q7 Volume Shipping (NATION1 = FRANCE, NATION2 = GERMANY)."""
    n1_name, n2_name = p.params["NATION1"], p.params["NATION2"]
    pair = [n1_name, n2_name]
    n1 = nation.filter(_c("n_name").isin(pair)).select(_c("n_nationkey").alias("n1_nationkey"),
                                                        _c("n_name").alias("supp_nation"))
    n2 = nation.filter(_c("n_name").isin(pair)).select(_c("n_nationkey").alias("n2_nationkey"),
                                                        _c("n_name").alias("cust_nation"))
    suppliers = supplier.join(n1, _c("s_nationkey") == _c("n1_nationkey")).select("s_suppkey", "supp_nation")
    customers = customer.join(n2, _c("c_nationkey") == _c("n2_nationkey")).select("c_custkey", "cust_nation")
    lines = lineitem.filter(_c("l_shipdate").between(F.lit(p.params["DATE_FROM"]), F.lit(p.params["DATE_TO"])))
    return (lines.join(suppliers, _c("l_suppkey") == _c("s_suppkey"))
            .join(orders, _c("o_orderkey") == _c("l_orderkey"))
            .join(customers, _c("c_custkey") == _c("o_custkey"))
            .filter(((_c("supp_nation") == n1_name) & (_c("cust_nation") == n2_name))
                    | ((_c("supp_nation") == n2_name) & (_c("cust_nation") == n1_name)))
            .select("supp_nation", "cust_nation", F.year("l_shipdate").alias("l_year"), _volume().alias("volume"))
            .groupBy("supp_nation", "cust_nation", "l_year")
            .agg(F.sum("volume").alias("revenue"))
            .orderBy("supp_nation", "cust_nation", "l_year"))


@_query(8, part=["p_partkey", "p_type"], supplier=["s_suppkey", "s_nationkey"],
        lineitem=["l_orderkey", "l_partkey", "l_suppkey", "l_extendedprice", "l_discount"],
        orders=["o_orderkey", "o_custkey", "o_orderdate"], customer=["c_custkey", "c_nationkey"],
        nation=["n_nationkey", "n_name", "n_regionkey"], region=["r_regionkey", "r_name"])
def q08(p: _Ctx, part: DataFrame, supplier: DataFrame, lineitem: DataFrame, orders: DataFrame,
        customer: DataFrame, nation: DataFrame, region: DataFrame) -> DataFrame:
    """Q8 National Market Share (NATION = BRAZIL, REGION = AMERICA, TYPE = ECONOMY ANODIZED STEEL)."""
    n1 = (region.filter(_c("r_name") == p.params["REGION"])
          .join(nation, _c("r_regionkey") == _c("n_regionkey"))
          .select(_c("n_nationkey").alias("n1_nationkey")))
    n2 = nation.select(_c("n_nationkey").alias("n2_nationkey"), _c("n_name").alias("nation"))
    parts = part.filter(_c("p_type") == p.params["TYPE"]).select("p_partkey")
    orders_ = orders.filter(_c("o_orderdate").between(F.lit(p.params["DATE_FROM"]), F.lit(p.params["DATE_TO"])))
    customers = customer.join(n1, _c("c_nationkey") == _c("n1_nationkey")).select("c_custkey")
    suppliers = supplier.join(n2, _c("s_nationkey") == _c("n2_nationkey")).select("s_suppkey", "nation")
    all_nations = (lineitem.join(parts, _c("p_partkey") == _c("l_partkey"))
                   .join(orders_, _c("l_orderkey") == _c("o_orderkey"))
                   .join(customers, _c("o_custkey") == _c("c_custkey"))
                   .join(suppliers, _c("s_suppkey") == _c("l_suppkey"))
                   .select(F.year("o_orderdate").alias("o_year"), _volume().alias("volume"), "nation"))
    share = (F.sum(F.when(_c("nation") == p.params["NATION"], _c("volume")).otherwise(F.lit(0.0)))
             / F.sum("volume"))
    return all_nations.groupBy("o_year").agg(share.alias("mkt_share")).orderBy("o_year")


@_query(9, part=["p_partkey", "p_name"], supplier=["s_suppkey", "s_nationkey"],
        lineitem=["l_orderkey", "l_partkey", "l_suppkey", "l_quantity", "l_extendedprice", "l_discount"],
        partsupp=["ps_partkey", "ps_suppkey", "ps_supplycost"], orders=["o_orderkey", "o_orderdate"],
        nation=["n_nationkey", "n_name"])
def q09(p: _Ctx, part: DataFrame, supplier: DataFrame, lineitem: DataFrame, partsupp: DataFrame,
        orders: DataFrame, nation: DataFrame) -> DataFrame:
    """Q9 Product Type Profit Measure (COLOR = green)."""
    parts = part.filter(_c("p_name").like(f"%{p.params['COLOR']}%")).select("p_partkey")
    amount = _volume() - _c("ps_supplycost") * _c("l_quantity")
    return (lineitem.join(parts, _c("p_partkey") == _c("l_partkey"))
            .join(partsupp, (_c("ps_suppkey") == _c("l_suppkey")) & (_c("ps_partkey") == _c("l_partkey")))
            .join(supplier, _c("s_suppkey") == _c("l_suppkey"))
            .join(orders, _c("o_orderkey") == _c("l_orderkey"))
            .join(nation, _c("s_nationkey") == _c("n_nationkey"))
            .select(_c("n_name").alias("nation"), F.year("o_orderdate").alias("o_year"), amount.alias("amount"))
            .groupBy("nation", "o_year")
            .agg(F.sum("amount").alias("sum_profit"))
            .orderBy("nation", _c("o_year").desc()))


@_query(10, customer=["c_custkey", "c_name", "c_address", "c_nationkey", "c_phone", "c_acctbal", "c_comment"],
        orders=["o_orderkey", "o_custkey", "o_orderdate"],
        lineitem=["l_orderkey", "l_extendedprice", "l_discount", "l_returnflag"],
        nation=["n_nationkey", "n_name"])
def q10(p: _Ctx, customer: DataFrame, orders: DataFrame, lineitem: DataFrame, nation: DataFrame) -> DataFrame:
    """Q10 Returned Item Reporting (DATE = 1993-10-01)."""
    orders_ = orders.filter((_c("o_orderdate") >= F.lit(p.params["DATE"]))
                            & (_c("o_orderdate") < F.lit(p.params["DATE_END"]))).select("o_orderkey", "o_custkey")
    returned = lineitem.filter(_c("l_returnflag") == "R")
    # Aggregate per customer key first (c_custkey determines the other grouped columns), then fetch the
    # customer details for the aggregated rows only.
    revenue = (orders_.join(returned, _c("l_orderkey") == _c("o_orderkey"))
               .groupBy("o_custkey").agg(F.sum(_volume()).alias("revenue")))
    return (customer.join(revenue, _c("c_custkey") == _c("o_custkey"))
            .join(nation, _c("c_nationkey") == _c("n_nationkey"))
            .orderBy(_c("revenue").desc())
            .limit(20)
            .select("c_custkey", "c_name", "revenue", "c_acctbal", "n_name", "c_address", "c_phone", "c_comment"))


# ------------------------------------------------------------------------------------------- Q11 - Q15

@_query(11, partsupp=["ps_partkey", "ps_suppkey", "ps_availqty", "ps_supplycost"],
        supplier=["s_suppkey", "s_nationkey"], nation=["n_nationkey", "n_name"])
def q11(p: _Ctx, partsupp: DataFrame, supplier: DataFrame, nation: DataFrame) -> DataFrame:
    """Q11 Important Stock Identification (NATION = GERMANY, FRACTION = 0.0001 / SF)."""
    fraction = q11_fraction(p.scale)
    nations = nation.filter(_c("n_name") == p.params["NATION"]).select("n_nationkey")
    suppliers = supplier.join(nations, _c("s_nationkey") == _c("n_nationkey")).select("s_suppkey")
    stock = (partsupp.join(suppliers, _c("ps_suppkey") == _c("s_suppkey"))
             .select("ps_partkey", (_c("ps_supplycost") * _c("ps_availqty")).alias("stock_value")))
    per_part = stock.groupBy("ps_partkey").agg(F.sum("stock_value").alias("value"))
    # The threshold as a window over the same rows, so the tables are read once (Spark does not reuse
    # a Python data source scan between a separate aggregate and a cross join).
    return (per_part.withColumn("threshold", F.sum("value").over(Window.partitionBy()) * F.lit(fraction))
            .filter(_c("value") > _c("threshold"))
            .select("ps_partkey", "value")
            .orderBy(_c("value").desc()))


@_query(12, orders=["o_orderkey", "o_orderpriority"],
        lineitem=["l_orderkey", "l_shipdate", "l_commitdate", "l_receiptdate", "l_shipmode"])
def q12(p: _Ctx, orders: DataFrame, lineitem: DataFrame) -> DataFrame:
    """Q12 Shipping Modes and Order Priority (SHIPMODE1 = MAIL, SHIPMODE2 = SHIP, DATE = 1994-01-01)."""
    lines = lineitem.filter(_c("l_shipmode").isin(p.params["SHIPMODE1"], p.params["SHIPMODE2"])
                            & (_c("l_commitdate") < _c("l_receiptdate"))
                            & (_c("l_shipdate") < _c("l_commitdate"))
                            & (_c("l_receiptdate") >= F.lit(p.params["DATE"]))
                            & (_c("l_receiptdate") < F.lit(p.params["DATE_END"])))
    high = _c("o_orderpriority").isin("1-URGENT", "2-HIGH")
    return (orders.join(lines, _c("o_orderkey") == _c("l_orderkey"))
            .groupBy("l_shipmode")
            .agg(F.sum(F.when(high, 1).otherwise(0)).alias("high_line_count"),
                 F.sum(F.when(high, 0).otherwise(1)).alias("low_line_count"))
            .orderBy("l_shipmode"))


@_query(13, customer=["c_custkey"], orders=["o_orderkey", "o_custkey", "o_comment"])
def q13(p: _Ctx, customer: DataFrame, orders: DataFrame) -> DataFrame:
    """Q13 Customer Distribution (WORD1 = special, WORD2 = requests)."""
    pattern = f"%{p.params['WORD1']}%{p.params['WORD2']}%"
    orders_ = orders.filter(~_c("o_comment").like(pattern)).select("o_orderkey", "o_custkey")
    c_orders = (customer.join(orders_, _c("c_custkey") == _c("o_custkey"), "left")
                .groupBy("c_custkey").agg(F.count("o_orderkey").alias("c_count")))
    return (c_orders.groupBy("c_count")
            .agg(F.count(F.lit(1)).alias("custdist"))
            .orderBy(_c("custdist").desc(), _c("c_count").desc()))


@_query(14, lineitem=["l_partkey", "l_extendedprice", "l_discount", "l_shipdate"], part=["p_partkey", "p_type"])
def q14(p: _Ctx, lineitem: DataFrame, part: DataFrame) -> DataFrame:
    """Q14 Promotion Effect (DATE = 1995-09-01)."""
    lines = lineitem.filter((_c("l_shipdate") >= F.lit(p.params["DATE"]))
                            & (_c("l_shipdate") < F.lit(p.params["DATE_END"])))
    promo = F.sum(F.when(_c("p_type").like("PROMO%"), _volume()).otherwise(F.lit(0.0)))
    return (lines.join(part, _c("l_partkey") == _c("p_partkey"))
            .agg((F.lit(100.0) * promo / F.sum(_volume())).alias("promo_revenue")))


@_query(15, lineitem=["l_suppkey", "l_extendedprice", "l_discount", "l_shipdate"],
        supplier=["s_suppkey", "s_name", "s_address", "s_phone"])
def q15(p: _Ctx, lineitem: DataFrame, supplier: DataFrame) -> DataFrame:
    """Q15 Top Supplier (DATE = 1996-01-01)."""
    revenue0 = (lineitem.filter((_c("l_shipdate") >= F.lit(p.params["DATE"]))
                                & (_c("l_shipdate") < F.lit(p.params["DATE_END"])))
                .groupBy(_c("l_suppkey").alias("supplier_no"))
                .agg(F.sum(_volume()).alias("total_revenue")))
    # max over the very rows it is compared with: two separately computed floating-point sums could differ
    # in the last bit and match nothing. revenue0 has one row per supplier, so one partition is fine.
    top = (revenue0.withColumn("max_revenue", F.max("total_revenue").over(Window.partitionBy(F.lit(0))))
           .filter(_c("total_revenue") == _c("max_revenue")))
    return (supplier.join(top, _c("s_suppkey") == _c("supplier_no"))
            .select("s_suppkey", "s_name", "s_address", "s_phone", "total_revenue")
            .orderBy("s_suppkey"))


# ------------------------------------------------------------------------------------------- Q16 - Q22

@_query(16, partsupp=["ps_partkey", "ps_suppkey"], part=["p_partkey", "p_brand", "p_type", "p_size"],
        supplier=["s_suppkey", "s_comment"])
def q16(p: _Ctx, partsupp: DataFrame, part: DataFrame, supplier: DataFrame) -> DataFrame:
    """Q16 Parts/Supplier Relationship (BRAND = Brand#45, TYPE = MEDIUM POLISHED, SIZEs 49 14 23 45 19 3 36 9)."""
    complaints = supplier.filter(_c("s_comment").like("%Customer%Complaints%")).select("s_suppkey")
    parts = part.filter((_c("p_brand") != p.params["BRAND"])
                        & ~_c("p_type").like(f"{p.params['TYPE']}%")
                        & _c("p_size").isin(list(p.params["SIZES"])))  # type: ignore[call-overload]
    # NOT IN (subquery) == anti join here: s_suppkey is never null.
    return (partsupp.join(complaints, _c("ps_suppkey") == _c("s_suppkey"), "left_anti")
            .join(parts, _c("p_partkey") == _c("ps_partkey"))
            .groupBy("p_brand", "p_type", "p_size")
            .agg(F.countDistinct("ps_suppkey").alias("supplier_cnt"))
            .orderBy(_c("supplier_cnt").desc(), "p_brand", "p_type", "p_size"))


@_query(17, lineitem=["l_partkey", "l_quantity", "l_extendedprice"],
        part=["p_partkey", "p_brand", "p_container"])
def q17(p: _Ctx, lineitem: DataFrame, part: DataFrame) -> DataFrame:
    """Q17 Small-Quantity-Order Revenue (BRAND = Brand#23, CONTAINER = MED BOX)."""
    parts = (part.filter((_c("p_brand") == p.params["BRAND"]) & (_c("p_container") == p.params["CONTAINER"]))
             .select("p_partkey"))
    # All line items of the chosen parts, each with its part's average quantity (the correlated subquery).
    lines = (lineitem.join(parts, _c("l_partkey") == _c("p_partkey"))
             .withColumn("avg_quantity", F.avg("l_quantity").over(Window.partitionBy("l_partkey"))))
    return (lines.filter(_c("l_quantity") < F.lit(0.2) * _c("avg_quantity"))
            .agg((F.sum("l_extendedprice") / F.lit(7.0)).alias("avg_yearly")))


@_query(18, customer=["c_custkey", "c_name"], orders=["o_orderkey", "o_custkey", "o_orderdate", "o_totalprice"],
        lineitem=["l_orderkey", "l_quantity"])
def q18(p: _Ctx, customer: DataFrame, orders: DataFrame, lineitem: DataFrame) -> DataFrame:
    """Q18 Large Volume Customer (QUANTITY = 300)."""
    # The IN-subquery's per-order sum is the outer query's sum(l_quantity) too: compute it once.
    big = (lineitem.groupBy("l_orderkey").agg(F.sum("l_quantity").alias("quantity"))
           .filter(_c("quantity") > p.params["QUANTITY"]))
    return (orders.join(big, _c("o_orderkey") == _c("l_orderkey"))
            .join(customer, _c("c_custkey") == _c("o_custkey"))
            .orderBy(_c("o_totalprice").desc(), "o_orderdate")
            .limit(100)
            .select("c_name", "c_custkey", "o_orderkey", "o_orderdate", "o_totalprice",
                    _c("quantity").alias("sum(l_quantity)")))


@_query(19, lineitem=["l_partkey", "l_quantity", "l_extendedprice", "l_discount", "l_shipinstruct", "l_shipmode"],
        part=["p_partkey", "p_brand", "p_size", "p_container"])
def q19(p: _Ctx, lineitem: DataFrame, part: DataFrame) -> DataFrame:
    """Q19 Discounted Revenue (QUANTITY1/2/3 = 1/10/20, BRAND1/2/3 = Brand#12/23/34)."""
    groups = [  # (brand, containers, minimum quantity, maximum size)
        (p.params["BRAND1"], ["SM CASE", "SM BOX", "SM PACK", "SM PKG"], p.params["QUANTITY1"], 5),
        (p.params["BRAND2"], ["MED BAG", "MED BOX", "MED PKG", "MED PACK"], p.params["QUANTITY2"], 10),
        (p.params["BRAND3"], ["LG CASE", "LG BOX", "LG PACK", "LG PKG"], p.params["QUANTITY3"], 15),
    ]
    lines = lineitem.filter(_c("l_shipmode").isin("AIR", "AIR REG")
                            & (_c("l_shipinstruct") == "DELIVER IN PERSON")
                            & _c("l_quantity").between(min(g[2] for g in groups), max(g[2] for g in groups) + 10))
    parts = part.filter(_c("p_brand").isin([g[0] for g in groups])
                        & _c("p_size").between(1, max(g[3] for g in groups))
                        & _c("p_container").isin([c for g in groups for c in g[1]]))
    cond = None
    for brand, containers, qty, size in groups:
        one = ((_c("p_brand") == brand) & _c("p_container").isin(containers)
               & (_c("l_quantity") >= qty) & (_c("l_quantity") <= qty + 10)
               & _c("p_size").between(1, size))
        cond = one if cond is None else cond | one
    return (lines.join(parts, _c("p_partkey") == _c("l_partkey"))
            .filter(cond)
            .agg(F.sum(_volume()).alias("revenue")))


@_query(20, supplier=["s_suppkey", "s_name", "s_address", "s_nationkey"], nation=["n_nationkey", "n_name"],
        partsupp=["ps_partkey", "ps_suppkey", "ps_availqty"], part=["p_partkey", "p_name"],
        lineitem=["l_partkey", "l_suppkey", "l_quantity", "l_shipdate"])
def q20(p: _Ctx, supplier: DataFrame, nation: DataFrame, partsupp: DataFrame, part: DataFrame,
        lineitem: DataFrame) -> DataFrame:
    """Q20 Potential Part Promotion (COLOR = forest, DATE = 1994-01-01, NATION = CANADA)."""
    parts = part.filter(_c("p_name").like(f"{p.params['COLOR']}%")).select("p_partkey")
    shipped = (lineitem.filter((_c("l_shipdate") >= F.lit(p.params["DATE"]))
                               & (_c("l_shipdate") < F.lit(p.params["DATE_END"])))
               .groupBy("l_partkey", "l_suppkey")
               .agg((F.lit(0.5) * F.sum("l_quantity")).alias("half_quantity")))
    # A (part, supplier) without shipments has a NULL sum in the spec's subquery: no match, as in a join.
    offers = (partsupp.join(parts, _c("ps_partkey") == _c("p_partkey"), "left_semi")
              .join(shipped, (_c("ps_partkey") == _c("l_partkey")) & (_c("ps_suppkey") == _c("l_suppkey")))
              .filter(_c("ps_availqty") > _c("half_quantity"))
              .select("ps_suppkey"))
    nations = nation.filter(_c("n_name") == p.params["NATION"]).select("n_nationkey")
    return (supplier.join(nations, _c("s_nationkey") == _c("n_nationkey"))
            .join(offers, _c("s_suppkey") == _c("ps_suppkey"), "left_semi")
            .select("s_name", "s_address")
            .orderBy("s_name"))


@_query(21, supplier=["s_suppkey", "s_name", "s_nationkey"],
        lineitem=["l_orderkey", "l_suppkey", "l_commitdate", "l_receiptdate"],
        orders=["o_orderkey", "o_orderstatus"], nation=["n_nationkey", "n_name"])
def q21(p: _Ctx, supplier: DataFrame, lineitem: DataFrame, orders: DataFrame, nation: DataFrame) -> DataFrame:
    """Q21 Suppliers Who Kept Orders Waiting (NATION = SAUDI ARABIA)."""
    late = lineitem.filter(_c("l_receiptdate") > _c("l_commitdate")).select("l_orderkey", "l_suppkey")
    # EXISTS another supplier on the order  <=>  the order has more than one distinct supplier.
    multi = (lineitem.groupBy(_c("l_orderkey").alias("multi_orderkey"))
             .agg(F.countDistinct("l_suppkey").alias("n_suppliers"))
             .filter(_c("n_suppliers") > 1).select("multi_orderkey"))
    # NOT EXISTS another *late* supplier  <=>  (l1 being late) the order's late lines have one supplier.
    alone = (late.groupBy(_c("l_orderkey").alias("alone_orderkey"))
             .agg(F.countDistinct("l_suppkey").alias("n_late"))
             .filter(_c("n_late") == 1).select("alone_orderkey"))
    nations = nation.filter(_c("n_name") == p.params["NATION"]).select("n_nationkey")
    suppliers = supplier.join(nations, _c("s_nationkey") == _c("n_nationkey")).select("s_suppkey", "s_name")
    failed = orders.filter(_c("o_orderstatus") == "F").select("o_orderkey")
    return (late.join(suppliers, _c("l_suppkey") == _c("s_suppkey"))
            .join(failed, _c("o_orderkey") == _c("l_orderkey"))
            .join(multi, _c("multi_orderkey") == _c("l_orderkey"), "left_semi")
            .join(alone, _c("alone_orderkey") == _c("l_orderkey"), "left_semi")
            .groupBy("s_name")
            .agg(F.count(F.lit(1)).alias("numwait"))
            .orderBy(_c("numwait").desc(), "s_name")
            .limit(100))


@_query(22, customer=["c_custkey", "c_phone", "c_acctbal"], orders=["o_custkey"])
def q22(p: _Ctx, customer: DataFrame, orders: DataFrame) -> DataFrame:
    """Q22 Global Sales Opportunity (I1..I7 = 13 31 23 29 30 18 17)."""
    codes = list(p.params["CODES"])  # type: ignore[call-overload]
    customers = (customer.select("c_custkey", F.substring("c_phone", 1, 2).alias("cntrycode"), "c_acctbal")
                 .filter(_c("cntrycode").isin(codes)))
    # The subquery's average as a window over the same rows, so customer is read once (Spark does not reuse
    # a Python data source scan between a separate aggregate and a cross join); one partition, as for Q15.
    positive = F.when(_c("c_acctbal") > 0.0, _c("c_acctbal"))
    return (customers.withColumn("avg_acctbal", F.avg(positive).over(Window.partitionBy(F.lit(0))))
            .filter(_c("c_acctbal") > _c("avg_acctbal"))
            .join(orders, _c("c_custkey") == _c("o_custkey"), "left_anti")
            .groupBy("cntrycode")
            .agg(F.count(F.lit(1)).alias("numcust"), F.sum("c_acctbal").alias("totacctbal"))
            .orderBy("cntrycode"))


def run_query(n: int, tables: Mapping[str, DataFrame]) -> DataFrame:
    """The DataFrame of TPC-H query ``n`` (1..22) over ``tables`` (not yet executed)."""
    try:
        query = QUERIES[int(n)]
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"no TPC-H query {n!r}", hint="queries are numbered 1..22") from None
    return query(tables)


assert sorted(QUERIES) == list(range(1, 23)), "all 22 queries must be registered"
assert all(query_label(n) == SPECS[n].label for n in QUERIES)
