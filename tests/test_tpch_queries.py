"""The 22 TPC-H DataFrame queries against the DuckDB oracle at SF 0.01, and the oracle's comparison.

One SF 0.01 data set per session (tpchgen-cli, ~1 s) and one light local Spark session per module, stopped
at the module's end unless it was another fixture's session (then it is reused, never stopped). The
Spark tests carry the xdist group ``tpch`` so that ``--dist loadgroup`` can keep them in one worker.
"""

from __future__ import annotations

import datetime as dt
import decimal
import sys
from pathlib import Path

import pytest

pytest.importorskip("duckdb")

from ppml.tpch import gen  # noqa: E402
from ppml.tpch.comparison import compare  # noqa: E402
from ppml.tpch.oracle import Oracle  # noqa: E402
from ppml.tpch.spec import SPECS  # noqa: E402

SCALE = 0.01
ALL = list(range(1, 23))


@pytest.fixture(scope="session")
def tpch_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tpch-sf001")
    gen.generate(SCALE, out)
    return out


@pytest.fixture(scope="session")
def tpch_oracle(tpch_dir):
    with Oracle(tpch_dir) as oracle:
        yield oracle


# -- compare() on its own (no Spark): it must bite, and must not bite a correct answer ---------------------


def _expected(oracle: Oracle, n: int) -> list[tuple]:
    rows = oracle.answer(n)
    assert rows, f"Q{n:02d} is empty at SF {SCALE}: pick another query for this test"
    return rows


def test_oracle_reports_the_spec_columns(tpch_oracle):
    for n in ALL:
        assert tpch_oracle.columns(n) == list(SPECS[n].columns), n


def test_oracle_reads_the_scale_from_the_marker(tpch_oracle):
    assert tpch_oracle.scale == SCALE


def test_compare_accepts_the_answer_itself_and_engine_representations(tpch_oracle):
    for n in ALL:
        expected = tpch_oracle.answer(n)
        assert compare(n, expected, expected) == [], n
        # how Spark would return it: doubles for decimals, ISO strings or datetimes for dates
        as_spark = [tuple(float(v) if isinstance(v, decimal.Decimal) else
                          (dt.datetime.combine(v, dt.time()) if isinstance(v, dt.date) else v)
                          for v in row) for row in expected]
        assert compare(n, as_spark, expected, actual_columns=list(SPECS[n].columns)) == [], n


def test_compare_names_query_row_and_column_of_a_perturbed_value(tpch_oracle):
    expected = _expected(tpch_oracle, 3)
    actual = [list(r) for r in expected]
    actual[3][1] = float(actual[3][1]) * (1 + 1e-4)  # revenue of the 4th row, off by 0.01 %
    problems = compare(3, actual, expected)
    assert len(problems) == 1
    assert problems[0].startswith("Q03 row 4 column revenue: ")


def test_compare_tolerates_float_noise_but_not_real_differences():
    expected = [("A", "F", decimal.Decimal("380456.00"), decimal.Decimal("532348211.65"),
                 decimal.Decimal("505822441.4861"), decimal.Decimal("526165934.000839"),
                 decimal.Decimal("25.5751"), decimal.Decimal("35785.709307"), decimal.Decimal("0.050081"), 14876)]
    noisy = [tuple(float(v) * (1 + 3e-9) if isinstance(v, decimal.Decimal) else v for v in expected[0])]
    assert compare(1, noisy, expected) == []
    # averages get 1e-4 relative, sums 1e-6
    avg_off = [list(noisy[0])]
    avg_off[0][6] = 25.5751 * (1 + 5e-5)
    assert compare(1, avg_off, expected) == []
    avg_off[0][6] = 25.5751 * (1 + 5e-4)
    assert [p.split(":")[0] for p in compare(1, avg_off, expected)] == ["Q01 row 1 column avg_qty"]
    sum_off = [list(noisy[0])]
    sum_off[0][3] = 532348211.65 * (1 + 1e-5)
    assert [p.split(":")[0] for p in compare(1, sum_off, expected)] == ["Q01 row 1 column sum_base_price"]
    count_off = [list(noisy[0])]
    count_off[0][9] = 14875
    assert compare(1, count_off, expected) == ["Q01 row 1 column count_order: 14875 != 14876"]


def test_compare_reports_a_missing_row(tpch_oracle):
    expected = _expected(tpch_oracle, 10)
    actual = expected[:4] + expected[5:]
    problems = compare(10, actual, expected)
    assert problems[0] == f"Q10 row count: {len(expected) - 1} != {len(expected)}"
    assert any(p.startswith("Q10 row 5 missing from the answer: c_custkey=") for p in problems), problems
    assert len(problems) == 2
    # a row too many is reported too
    assert compare(10, expected + [expected[0]], expected)[1].startswith("Q10 unexpected row: c_custkey=")


def test_compare_reports_swapped_columns(tpch_oracle):
    expected = _expected(tpch_oracle, 10)
    cols = list(SPECS[10].columns)
    a, p = cols.index("c_address"), cols.index("c_phone")
    actual = []
    for row in expected:
        row = list(row)
        row[a], row[p] = row[p], row[a]
        actual.append(row)
    swapped = cols.copy()
    swapped[a], swapped[p] = swapped[p], swapped[a]
    problems = compare(10, actual, expected, actual_columns=swapped)
    assert problems[0].startswith("Q10 columns: ")
    assert "Q10 row 1 column c_address: " in problems[1]
    assert any(x.startswith("Q10 row 1 column c_phone: ") for x in problems)


def test_compare_accepts_any_order_among_equal_order_by_keys():
    # Q13 orders by custdist desc, c_count desc: make a run of equal keys in Q21 (numwait desc, s_name)
    # and Q03 (revenue desc, o_orderdate) instead, where other columns differ within the run.
    expected = [(1, 100.0, "1995-01-01", 0), (2, 90.0, "1995-01-02", 0), (3, 90.0, "1995-01-02", 0),
                (4, 80.0, "1995-01-03", 0)]
    swapped = [expected[0], expected[2], expected[1], expected[3]]
    assert compare(3, swapped, expected) == []
    # ... but not a swap across different keys
    wrong = [expected[1], expected[0], expected[2], expected[3]]
    assert compare(3, wrong, expected)
    # equal keys within float noise count as equal
    noisy = [expected[0], (3, 90.0 * (1 + 1e-9), "1995-01-02", 0), expected[1], expected[3]]
    assert compare(3, noisy, expected) == []


def test_compare_accepts_another_row_of_a_tie_cut_by_limit():
    # Q03 has LIMIT 10; the 10th and an 11th row tie on (revenue, o_orderdate): either may be returned.
    expected = [(k, 1000.0 - k, "1995-01-01", 0) for k in range(1, 10)] + [(10, 500.0, "1995-02-02", 0)]
    actual = expected[:9] + [(11, 500.0, "1995-02-02", 0)]
    assert compare(3, actual, expected) == []
    actual = expected[:9] + [(11, 499.0, "1995-02-02", 0)]
    assert [p.split(":")[0] for p in compare(3, actual, expected)] == ["Q03 row 10 column revenue"]


# -- Spark ----------------------------------------------------------------------------------------------

pyspark = pytest.importorskip("pyspark")

from ppml.tpch.queries import COLUMNS_USED, QUERIES, run_query  # noqa: E402
from ppml.tpch.schema import TABLE_NAMES, arrow_schema, spark_schema, table_files  # noqa: E402
from ppml.tpch.tables import Tables, read_tbl, read_tbl_arrow, tbl_tables  # noqa: E402

spark_tests = pytest.mark.xdist_group("tpch")


@pytest.fixture(scope="module")
def tpch_spark():
    from pyspark.sql import SparkSession

    existing = SparkSession.getActiveSession()  # e.g. conftest's session-scoped spark_session
    with pytest.MonkeyPatch.context() as mp:
        # Python workers (the data source test) must run this interpreter, which has ppml and pyarrow.
        mp.setenv("PYSPARK_PYTHON", sys.executable)
        spark = (SparkSession.builder.master("local[2]").appName("ppml-tpch-tests")
                 .config("spark.ui.enabled", "false")
                 .config("spark.ui.showConsoleProgress", "false")
                 .config("spark.sql.shuffle.partitions", "4")
                 .getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        yield spark
        if existing is None:  # never stop a session another module's fixture owns
            spark.stop()


@pytest.fixture(scope="module")
def tpch_tables(tpch_spark, tpch_dir) -> Tables:
    return tbl_tables(tpch_spark, tpch_dir)


@spark_tests
def test_spark_reads_tbl_with_the_schema(tpch_spark, tpch_dir):
    for table in TABLE_NAMES:
        df = read_tbl(tpch_spark, tpch_dir, table)
        assert df.schema == spark_schema(table), table
    lineitem = read_tbl(tpch_spark, tpch_dir, "lineitem")
    first = lineitem.orderBy("l_orderkey", "l_linenumber").first()
    raw = table_files(tpch_dir, "lineitem")[0].read_text().splitlines()[0].split("|")
    assert raw[-1] == ""  # dbgen's trailing separator
    typed = [None if text == "" else
             (int(text) if isinstance(v, int) else float(text) if isinstance(v, float) else
              dt.date.fromisoformat(text) if isinstance(v, dt.date) else text)
             for v, text in zip(first, raw[:-1])]
    assert list(first) == typed
    assert lineitem.count() == sum(1 for _ in table_files(tpch_dir, "lineitem")[0].open())


@spark_tests
@pytest.mark.parametrize("n", ALL, ids=[f"Q{n:02d}" for n in ALL])
def test_query_matches_oracle(n, tpch_tables, tpch_oracle):
    df = run_query(n, tpch_tables)
    assert df.columns == list(SPECS[n].columns)
    problems = compare(n, df.collect(), tpch_oracle.answer(n), actual_columns=df.columns)
    assert problems == []


def _scanned_columns(df) -> dict[str, set[str]]:
    """Per table (by file name), the columns Spark's physical plan reads from its CSV scans."""
    plan = df._jdf.queryExecution().sparkPlan()
    leaves = plan.collectLeaves()
    scanned: dict[str, set[str]] = {}
    for i in range(leaves.size()):
        leaf = leaves.apply(i)
        if not leaf.nodeName().startswith("Scan"):
            continue
        root = Path(str(leaf.relation().location().rootPaths().apply(0).toString()))
        table = root.name.split(".")[0]
        scanned.setdefault(table, set()).update(leaf.requiredSchema().fieldNames())
    return scanned


@spark_tests
def test_columns_used_is_exactly_what_spark_reads(tpch_tables):
    # Every declared column survives Spark's column pruning (so none is declared needlessly), and the
    # scans read nothing else (queries only see their declared columns, see the next test).
    mismatches = {}
    for n in ALL:
        scanned = _scanned_columns(run_query(n, tpch_tables))
        declared = {t: set(cols) for t, cols in COLUMNS_USED[n].items()}
        if scanned != declared:
            mismatches[n] = (scanned, declared)
    assert mismatches == {}


@spark_tests
def test_queries_run_on_tables_narrowed_to_columns_used(tpch_spark, tpch_dir, tpch_oracle):
    """Each query over tables that hold only its COLUMNS_USED, read through a Python data source that,
    like an encrypted source, takes the narrower schema and yields Arrow batches of :func:`arrow_schema`."""
    from pyspark import cloudpickle
    from pyspark.sql.datasource import DataSource, DataSourceReader

    class TblSource(DataSource):
        @classmethod
        def name(cls):
            return "ppml_tpch_test_tbl"

        def reader(self, schema):
            return TblReader(self.options, schema)

    class TblReader(DataSourceReader):
        def __init__(self, options, schema):
            self.table = options["table"]
            self.paths = options["paths"].split("\n")
            self.columns = [f.name for f in schema.fields]

        def read(self, partition):
            table = read_tbl_arrow(self.paths, self.table, self.columns)
            assert table.schema == arrow_schema(self.table, self.columns)
            yield from table.to_batches()

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tpch_spark.dataSource.register(TblSource)
    loaded: dict[str, list[str]] = {}

    def load(table, columns):
        assert columns is not None
        loaded[table] = list(columns)
        return (tpch_spark.read.format(TblSource.name()).schema(spark_schema(table, columns))
                .option("table", table).option("paths", "\n".join(map(str, table_files(tpch_dir, table))))
                .load())

    source = Tables(loader=load, scale=SCALE)
    problems = {}
    for n in ALL:
        loaded.clear()
        narrowed = source.narrowed(COLUMNS_USED[n])
        df = run_query(n, narrowed)
        assert loaded == COLUMNS_USED[n]
        mismatch = compare(n, df.collect(), tpch_oracle.answer(n), actual_columns=df.columns)
        if mismatch:
            problems[n] = mismatch
    assert problems == {}


@spark_tests
def test_a_query_names_a_missing_table(tpch_tables):
    from ppml.errors import UsageError

    with pytest.raises(UsageError, match="Q05 needs table region"):
        run_query(5, tpch_tables.narrowed({k: v for k, v in COLUMNS_USED[5].items() if k != "region"}))
    with pytest.raises(UsageError, match="no TPC-H query 23"):
        run_query(23, tpch_tables)
    assert sorted(QUERIES) == ALL
