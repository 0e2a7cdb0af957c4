"""TPC-H schema, file naming, spec helpers and data generation (no Spark needed for most)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from ppml.errors import AlreadyExistsError, ConfigError, UsageError
from ppml.tpch import gen
from ppml.tpch.schema import TABLE_FILES, TABLE_NAMES, TRAILING_COLUMN, column_names, table_files
from ppml.tpch.spec import SPECS, parse_query_numbers, q11_fraction

DBGEN_COLUMNS = {  # TPC-H 3.0.1 clause 1.4.1, in file order
    "region": 3, "nation": 4, "supplier": 7, "customer": 8, "part": 9, "partsupp": 5, "orders": 9, "lineitem": 16,
}


def test_tables_and_columns_follow_dbgen():
    assert TABLE_NAMES == ("region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem")
    for table, count in DBGEN_COLUMNS.items():
        assert len(column_names(table)) == count, table
    assert column_names("lineitem")[:5] == ["l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", "l_quantity"]
    assert TABLE_FILES["orders"] == "orders.tbl*"


def test_spark_and_arrow_schemas_agree():
    pa = pytest.importorskip("pyarrow")
    pytest.importorskip("pyspark")
    from pyspark.sql import types as T

    from ppml.tpch.schema import TABLES, arrow_schema, spark_schema

    to_arrow = {T.LongType(): pa.int64(), T.IntegerType(): pa.int32(), T.DoubleType(): pa.float64(),
                T.DateType(): pa.date32(), T.StringType(): pa.string()}
    for table in TABLE_NAMES:
        spark, arrow = spark_schema(table), arrow_schema(table)
        assert [(f.name, f.dataType) for f in spark.fields] == TABLES[table]
        assert [f.name for f in arrow] == spark.fieldNames() == column_names(table)
        assert [f.type for f in arrow] == [to_arrow[f.dataType] for f in spark.fields]
        assert all(f.nullable for f in arrow) and all(f.nullable for f in spark.fields)
    assert not any(f.type == pa.large_string() for t in TABLE_NAMES for f in arrow_schema(t))
    assert dict(TABLES["lineitem"])["l_quantity"] == T.DoubleType()
    assert dict(TABLES["orders"])["o_orderdate"] == T.DateType()
    assert spark_schema("orders", trailing=True).fieldNames()[-1] == TRAILING_COLUMN
    # narrowing keeps table order whatever order the columns are asked in
    assert spark_schema("nation", ["n_name", "n_nationkey"]).fieldNames() == ["n_nationkey", "n_name"]
    assert arrow_schema("nation", ["n_name", "n_nationkey"]).names == ["n_nationkey", "n_name"]
    with pytest.raises(UsageError, match="no column 'n_bogus'"):
        spark_schema("nation", ["n_bogus"])
    with pytest.raises(UsageError, match="unknown TPC-H table"):
        arrow_schema("nations")


def test_table_files_picks_tbl_parts_in_natural_order(tmp_path):
    for name in ["lineitem.tbl.10", "lineitem.tbl.2", "lineitem.tbl.1", "lineitem.tbl.cbc", "orders.tbl",
                 "lineitemx.tbl"]:
        (tmp_path / name).write_text("")
    assert [p.name for p in table_files(tmp_path, "lineitem")] == [
        "lineitem.tbl.1", "lineitem.tbl.2", "lineitem.tbl.10", "lineitem.tbl.cbc"]
    assert [p.name for p in table_files(tmp_path, "lineitem", plaintext=True)] == [
        "lineitem.tbl.1", "lineitem.tbl.2", "lineitem.tbl.10"]
    assert table_files(tmp_path, "region") == []


def test_parse_query_numbers():
    assert parse_query_numbers(None) == list(range(1, 23))
    assert parse_query_numbers([]) == list(range(1, 23))
    assert parse_query_numbers(["q6", "Q01", "3-5", "22,6"]) == [6, 1, 3, 4, 5, 22]
    for bad in ["23", "Q0", "x", "1-30"]:
        with pytest.raises(UsageError):
            parse_query_numbers([bad])


def test_spec_parameters():
    assert q11_fraction(None) == q11_fraction(1) == 0.0001
    assert q11_fraction(0.01) == 0.01
    assert q11_fraction(100) == 0.000001
    assert SPECS[1].params["DELTA"] == 90 and str(SPECS[1].params["SHIPDATE_MAX"]) == "1998-09-02"
    assert SPECS[2].params == {"SIZE": 15, "TYPE": "BRASS", "REGION": "EUROPE"}
    assert [s.limit for s in SPECS.values() if s.limit] == [100, 10, 20, 100, 100]  # Q2 Q3 Q10 Q18 Q21
    for spec in SPECS.values():
        assert {c for c, _ in spec.order_by} <= set(spec.columns)
        assert set(spec.averages) <= set(spec.columns)


# -- generation ---------------------------------------------------------------------------------------------


def test_generate_writes_all_tables_and_reuses_them(tmp_path):
    out = tmp_path / "sf"
    paths = gen.generate(0.001, out)
    assert sorted(paths) == sorted(TABLE_NAMES)
    for table, path in paths.items():
        assert path == out / f"{table}.tbl"
        first = path.read_text().splitlines()[0]
        assert first.endswith("|") and first.count("|") == DBGEN_COLUMNS[table], table
    assert gen.read_scale(out) == 0.001
    marker = json.loads((out / gen.MARKER).read_text())
    assert marker["files"]["lineitem"] == paths["lineitem"].stat().st_size
    assert not [p for p in out.iterdir() if p.name.startswith(".tpchgen-")]  # staging removed

    mtime = paths["lineitem"].stat().st_mtime_ns
    assert gen.generate(0.001, out) == paths  # reused, not rewritten
    assert paths["lineitem"].stat().st_mtime_ns == mtime

    with pytest.raises(AlreadyExistsError, match="scale 0.001"):
        gen.generate(0.002, out)
    # a changed file is noticed and regenerated
    paths["region"].write_text("0|X|y|\n")
    gen.generate(0.001, out)
    assert paths["region"].read_text().count("\n") == 5


def test_generate_refuses_foreign_tbl_files_unless_forced(tmp_path):
    (tmp_path / "lineitem.tbl").write_text("mine\n")
    with pytest.raises(AlreadyExistsError, match="not written by ppml"):
        gen.generate(0.001, tmp_path)
    assert (tmp_path / "lineitem.tbl").read_text() == "mine\n"
    gen.generate(0.001, tmp_path, force=True)
    assert (tmp_path / "lineitem.tbl").read_text() != "mine\n"


def test_generate_rejects_bad_scales(tmp_path):
    for bad in [0, -1, float("nan"), float("inf"), "x"]:
        with pytest.raises(UsageError):
            gen.generate(bad, tmp_path)


def test_missing_tpchgen_is_a_config_error_with_an_install_hint(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setattr(gen.sys, "executable", str(empty / "python"))
    monkeypatch.setattr(gen.sysconfig, "get_path", lambda name: str(empty))
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ConfigError) as info:
        gen.generate(0.001, tmp_path / "out")
    assert info.value.hint == "pip install tpchgen-cli"
    assert not (tmp_path / "out" / gen.MARKER).exists()


def test_tpchgen_is_found_next_to_the_interpreter():
    found = gen.find_tpchgen()
    assert found.name.startswith("tpchgen-cli")
    assert os.access(found, os.X_OK)
    if (gen.Path(sys.executable).parent / "tpchgen-cli").exists():
        assert found.parent == gen.Path(sys.executable).parent
