"""The ``ppml`` Spark data source and PPMLContext, through a real local Spark session."""

from __future__ import annotations

import io
import json
import os
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppml.errors import AlreadyExistsError
from ppml.io import files
from ppml.spark.splits import LineRange

pyspark = pytest.importorskip("pyspark")

from pyspark.errors import PySparkException  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.types import DateType, DoubleType, LongType, StringType, StructField, StructType  # noqa: E402

from ppml.keys.settings import KeySettings  # noqa: E402
from ppml.spark import PPMLContext  # noqa: E402

SCHEMA = StructType([
    StructField("id", LongType()), StructField("name", StringType()), StructField("price", DoubleType()),
    StructField("day", DateType()),
])


# -- the line rule, without Spark ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=60),
       final_newline=st.booleans(), cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=8))
def test_every_line_is_read_by_exactly_one_split(lines, final_newline, cuts):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    bounds = sorted({c for c in cuts if c < len(data)})
    starts, ends = [0, *bounds], [*bounds, len(data)]
    pieces = [io.BufferedReader(LineRange(io.BytesIO(data), s, e)).read() for s, e in zip(starts, ends)]
    assert b"".join(pieces) == data
    for index, piece in enumerate(pieces):
        if piece and not piece.endswith(b"\n"):  # only the split that reaches the end of the data
            assert not any(pieces[index + 1 :])


# -- Spark -----------------------------------------------------------------------------------------------

pytestmark = pytest.mark.xdist_group("spark")


def _rows(count: int, seed: int = 7) -> list[tuple]:
    rng = random.Random(seed)
    return [(i, f"name|{i}" if i % 97 == 0 else f"name{i}", round(rng.uniform(0, 1000), 2),
             f"1995-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}") for i in range(count)]


def _write_csv(path, rows, header=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        if header:
            handle.write("id,name,price,day\n")
        for row in rows:
            name = f'"{row[1]}"' if "|" in row[1] else row[1]
            handle.write(f"{row[0]},{name},{row[2]},{row[3]}\n")


@pytest.fixture
def ctx(spark_session, spark_keys):
    return PPMLContext(spark_session, data_key=spark_keys["data_key"], keys=spark_keys["settings"])


@pytest.fixture
def encrypted_table(tmp_path, spark_keys):
    """Two CSV files (one multi-MiB) encrypted with 64 KiB segments, and their rows."""
    rows = _rows(120_000)
    _write_csv(tmp_path / "plain" / "t1.csv", rows[:100_000])
    _write_csv(tmp_path / "plain" / "t2.csv", rows[100_000:])
    from ppml.keys.datakey_file import DataKeyFile

    record = DataKeyFile.load(spark_keys["data_key"])
    files.encrypt(str(tmp_path / "plain"), str(tmp_path / "enc"), key=spark_keys["key"], envelope=record.envelope,
                  segment_size=64 * 1024)
    return tmp_path / "enc", rows


def _collect(df):
    return sorted(tuple(r) for r in df.collect())


def test_encrypted_read_equals_spark_plaintext_read(ctx, encrypted_table, tmp_path):
    enc, _ = encrypted_table
    ours = ctx.read().option("header", True).option("splitSize", 1 << 20).schema(SCHEMA).csv(str(enc))
    spark_own = ctx.spark.read.option("header", True).schema(SCHEMA).csv(str(tmp_path / "plain"))
    assert ours.rdd.getNumPartitions() >= 4  # the 4.6 MB file is split across tasks
    assert _collect(ours) == _collect(spark_own)
    assert ours.count() == 120_000


def _encrypt_file(spark_keys, plain, target, rows):
    from ppml.keys.datakey_file import DataKeyFile

    _write_csv(plain, rows)
    envelope = DataKeyFile.load(spark_keys["data_key"]).envelope
    files.encrypt(str(plain), str(target), key=spark_keys["key"], envelope=envelope, segment_size=64 * 1024, force=True)


def test_planning_reads_each_version_of_a_header_once(spark_keys, tmp_path):
    from ppml.spark.splits import _header, plan_splits

    target = tmp_path / "enc" / "t.csv.ppml"
    _encrypt_file(spark_keys, tmp_path / "t.csv", target, _rows(60_000))
    def plan():
        return [(s.url, s.start, s.end) for s in plan_splits((str(tmp_path / "enc"),), "aes_gcm_stream", 1 << 20)]

    first = plan()
    read = _header.cache_info().misses
    assert plan() == first and _header.cache_info().misses == read  # unchanged: planned from the cache
    _encrypt_file(spark_keys, tmp_path / "t.csv", target, _rows(20_000))
    second = plan()
    assert _header.cache_info().misses == read + 1 and len(second) < len(first)
    _header.cache_clear()
    assert plan() == second  # what planning from scratch gives


def test_a_file_rewritten_between_queries_is_read_whole(ctx, spark_keys, tmp_path):
    """Spark plans each scan in a reused Python worker; a plan cached for the old file would cut the new one."""
    target = tmp_path / "enc" / "t.csv.ppml"
    read = lambda: ctx.read().option("header", True).schema(SCHEMA).csv(str(tmp_path / "enc")).count()  # noqa: E731
    _encrypt_file(spark_keys, tmp_path / "t.csv", target, _rows(1_000))
    assert read() == 1_000 and read() == 1_000
    _encrypt_file(spark_keys, tmp_path / "t.csv", target, _rows(50_000))
    assert read() == 50_000


def test_reads_are_cut_and_broadcast_by_size_as_spark_does_its_own_files(ctx, encrypted_table, tmp_path):
    from ppml.spark.sizing import split_size

    enc, rows = encrypted_table
    spark = ctx.spark
    sizes = sorted(p.stat().st_size for p in enc.iterdir() if not p.name.startswith("_"))  # not the manifest
    spark.conf.set("spark.sql.files.openCostInBytes", "1MB")
    spark.conf.set("spark.sql.adaptive.enabled", "false")  # the joins as planned, not as re-planned on the way
    try:
        # local[2]: (the files' bytes + 1 MiB per file) over 2 cores; the 4.6 MB file takes 2 tasks.
        assert split_size(spark, sizes) == (sum(sizes) + 2 * (1 << 20)) // 2
        df = ctx.read().option("header", True).schema(SCHEMA).csv(str(enc))
        assert df.rdd.getNumPartitions() == 3 and df.count() == len(rows)
        explicit = ctx.read().option("header", True).option("SPLITSIZE", 8 << 20).schema(SCHEMA).csv(str(enc))
        assert explicit.rdd.getNumPartitions() == 2

        def join_plan():
            left = ctx.read().option("header", True).schema(SCHEMA).columns("id", "price").csv(str(enc))
            right = ctx.read().option("header", True).schema(SCHEMA).columns("id", "name").csv(str(enc))
            return left.join(right, "id")._jdf.queryExecution().executedPlan().toString()

        assert "BroadcastHashJoin" in join_plan()  # about 5 MB, at most 3/4 of the row width read
        spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "1MB")
        assert "SortMergeJoin" in join_plan()
    finally:
        for setting in ("spark.sql.files.openCostInBytes", "spark.sql.adaptive.enabled",
                        "spark.sql.autoBroadcastJoinThreshold"):
            spark.conf.unset(setting)


def test_format_ppml_for_plain_spark_users(ctx, encrypted_table, spark_keys):
    enc, rows = encrypted_table
    df = (ctx.spark.read.format("ppml").option("header", "true").option("keystore", spark_keys["keystore"])
          .option("keystorePassword", f"file:{spark_keys['password_file']}").schema(SCHEMA).load(str(enc)))
    assert df.agg(F.sum("id")).first()[0] == sum(r[0] for r in rows)


def test_filter_pushdown_and_column_pruning_give_the_same_answers(ctx, encrypted_table):
    enc, _ = encrypted_table
    condition = (F.col("price") >= 500.0) & (F.col("day") < F.lit("1995-06-01").cast("date")) & F.col("name").startswith("name1")
    pushed = ctx.read().option("header", True).schema(SCHEMA).csv(str(enc)).filter(condition)
    unpushed = ctx.read().option("header", True).option("filterPushdown", False).schema(SCHEMA).csv(str(enc)).filter(condition)
    assert _collect(pushed) == _collect(unpushed) and pushed.count() > 0
    pruned = ctx.read().option("header", True).schema(SCHEMA).columns("price", "id").csv(str(enc))
    assert pruned.columns == ["price", "id"]
    full = ctx.read().option("header", True).schema(SCHEMA).csv(str(enc)).select("price", "id")
    assert _collect(pruned) == _collect(full)


def test_pushdown_takes_only_filters_it_evaluates_exactly():
    from pyspark.sql.datasource import EqualTo, GreaterThan, In, Not, StringContains

    from ppml.spark.reader import FilteringPpmlReader

    reader = FilteringPpmlReader.__new__(FilteringPpmlReader)
    reader.schema = SCHEMA
    taken = [GreaterThan(("price",), 1.0), In(("id",), (1, 2)), StringContains(("name",), "x")]
    left = [Not(EqualTo(("id",), 1)), In(("id",), (1, None)), EqualTo(("nested", "x"), 1)]
    assert list(reader.pushFilters(taken + left)) == left
    assert reader.filters == taken


@pytest.mark.parametrize("mode", ["aes_gcm_stream", "plain_text"])
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_write_then_read_round_trip(ctx, tmp_path, mode, fmt):
    df = ctx.spark.createDataFrame([(r[0], r[1], r[2], None) for r in _rows(5000)], SCHEMA).repartition(3)
    out = str(tmp_path / "out")
    getattr(ctx.write(df, mode).mode("overwrite").option("header", True), fmt)(out)
    names = os.listdir(out)
    assert "_SUCCESS" in names and not any(n.startswith("_temporary") for n in names)
    parts = [n for n in names if n.startswith("part-")]
    assert len(parts) == 3 and all(n.endswith(f".{fmt}.ppml" if mode == "aes_gcm_stream" else f".{fmt}") for n in parts)
    back = getattr(ctx.read(mode).option("header", True).schema(SCHEMA), fmt)(out)
    assert _collect(back) == _collect(df)
    if mode == "aes_gcm_stream":
        marker = b"name4999"
        assert all(marker not in open(os.path.join(out, n), "rb").read() for n in parts)


def test_text_round_trip(ctx, tmp_path):
    df = ctx.spark.createDataFrame([(f"line {i}",) for i in range(1000)], "value string")
    ctx.write(df).mode("overwrite").text(str(tmp_path / "t"))
    assert _collect(ctx.read().text(str(tmp_path / "t"))) == _collect(df)


def test_save_modes(ctx, tmp_path, spark_keys):
    out = str(tmp_path / "modes")
    first = ctx.spark.createDataFrame([(1, "a", 1.0, None)], SCHEMA)
    second = ctx.spark.createDataFrame([(2, "b", 2.0, None)], SCHEMA)
    ctx.write(first).option("header", True).csv(out)
    with pytest.raises(AlreadyExistsError):
        ctx.write(second).option("header", True).csv(out)
    ctx.write(second).mode("ignore").option("header", True).csv(out)
    read = lambda: sorted(r.id for r in ctx.read().option("header", True).schema(SCHEMA).csv(out).collect())  # noqa: E731
    assert read() == [1]
    # Append after a key rotation and with a new data key: old files keep their own key.
    spark_keys["kms"].rotate_key("default")
    from ppml.keys.datakey_file import DataKeyFile

    key, wrapped = spark_keys["kms"].generate_data_key("default")
    DataKeyFile.new(key.key_id, (wrapped,)).save(tmp_path / "dk2.json")
    ctx2 = PPMLContext(ctx.spark, data_key=str(tmp_path / "dk2.json"), keys=spark_keys["settings"])
    ctx2.write(second).mode("append").option("header", True).csv(out)
    assert read() == [1, 2]
    versions = {w.reference for p in os.listdir(out) if p.startswith("part-")
                for w in files.describe(files.locate(os.path.join(out, p))).envelope}
    assert versions == {"local:default#v1", "local:default#v2"}
    ctx.write(second).mode("overwrite").option("header", True).csv(out)
    assert read() == [2]


def test_failed_job_leaves_no_output_and_keeps_old_data(ctx, tmp_path):
    out = str(tmp_path / "atomic")
    ctx.write(ctx.spark.createDataFrame([(1, "keep", 1.0, None)], SCHEMA)).option("header", True).csv(out)
    before = sorted(os.listdir(out))

    @F.udf("string")
    def explode_on_7(name):
        if name == "n7":
            raise ValueError("task failure on purpose")
        return name

    bad = ctx.spark.createDataFrame([(i, f"n{i}", 1.0, None) for i in range(10)], SCHEMA).repartition(3)
    bad = bad.withColumn("name", explode_on_7("name"))
    with pytest.raises(Exception):
        ctx.write(bad).mode("overwrite").option("header", True).csv(out)
    assert sorted(os.listdir(out)) == before
    assert [r.name for r in ctx.read().option("header", True).schema(SCHEMA).csv(out).collect()] == ["keep"]


def test_a_commit_that_fails_while_moving_parts_keeps_the_old_data(ctx, tmp_path):
    """Storage lost in the middle of a job's commit: the output it was to replace must still be there."""
    from ppml.spark.options import parse_options
    from ppml.spark.writer import PartCommit, PpmlWriter

    out = tmp_path / "commit"
    ctx.write(ctx.spark.createDataFrame([(1, "keep", 1.0, None)], SCHEMA)).option("header", True).csv(str(out))
    before = sorted(os.listdir(out))
    writer = PpmlWriter(parse_options({**ctx._settings, "header": "true"}, path=str(out)), SCHEMA, overwrite=True)
    vanished = PartCommit(str(out / "_temporary" / writer.job_id / "0-part-00000.csv.ppml"),
                          str(out / f"part-00000-{writer.job_id}.csv.ppml"))
    with pytest.raises(FileNotFoundError):
        writer.commit([vanished])  # the staged part cannot be moved: what storage refuses mid-commit
    assert sorted(os.listdir(out)) == [n for n in before if n != "_SUCCESS"]  # not vouched for, but all there
    assert [r.name for r in ctx.read().option("header", True).schema(SCHEMA).csv(str(out)).collect()] == ["keep"]


def test_bigdl_cbc_read_and_write(ctx, tmp_path, monkeypatch):
    import base64

    from ppml.keys.bigdl import PlaintextPrimaryKeyKms
    from ppml.keys.datakey_file import DataKeyFile

    primary = bytes(range(32))
    (tmp_path / "pk.b64").write_text(base64.b64encode(primary).decode())
    kms = PlaintextPrimaryKeyKms(primary)
    key, wrapped = kms.generate_data_key("")
    DataKeyFile.new(key.key_id, (wrapped,)).save(tmp_path / "bigdl-dk.json")
    bigdl = PPMLContext(ctx.spark, data_key=str(tmp_path / "bigdl-dk.json"),
                        keys=KeySettings(bigdl_kms="plaintext", bigdl_primary_key=f"file:{tmp_path / 'pk.b64'}"))
    df = ctx.spark.createDataFrame([(r[0], r[1], r[2], None) for r in _rows(3000)], SCHEMA).repartition(2)
    out = str(tmp_path / "bigdl")
    bigdl.write(df, "aes/cbc/pkcs5padding").mode("overwrite").option("header", True).csv(out)
    names = os.listdir(out)
    assert ".meta" in names and all(n.endswith(".csv.cbc") for n in names if n.startswith("part-"))
    meta = json.loads(open(os.path.join(out, ".meta")).read())
    assert meta["encryptedDataKey"] == wrapped.wrapped.decode()
    back = bigdl.read("aes_cbc_pkcs5padding").option("header", True).schema(SCHEMA).csv(out)
    assert back.rdd.getNumPartitions() == 2  # one task per CBC file
    assert _collect(back) == _collect(df)


def test_wrong_key_store_fails_with_a_clear_error(ctx, encrypted_table, tmp_path):
    enc, _ = encrypted_table
    from keystores import make_keystore

    from ppml.errors import KeyAccessError

    make_keystore(tmp_path / "other.json", "spark-test-passphrase", "default")
    stranger = PPMLContext(ctx.spark, keys=ctx.keys.replace(keystore=str(tmp_path / "other.json")))
    # The driver checks the data set's manifest when the read is defined: the first thing read with the key.
    with pytest.raises(KeyAccessError, match=r"cannot unwrap the data key of .*enc/_ppml_manifest/v00000001.json"):
        stranger.read().option("header", True).schema(SCHEMA).csv(str(enc))
    # Spark's own reader, without the driver's check, fails in planning the same way.
    with pytest.raises(PySparkException, match="cannot unwrap the data key"):
        (ctx.spark.read.format("ppml").options(**stranger.keys.to_options()).option("header", True)
         .schema(SCHEMA).load(str(enc)).count())


def test_no_key_material_in_spark_conf_or_plans(ctx, encrypted_table, spark_keys):
    enc, _ = encrypted_table
    df = ctx.read().option("header", True).schema(SCHEMA).csv(str(enc))
    df.count()
    material = spark_keys["key"].unsafe_material()
    conf = json.dumps(ctx.spark.sparkContext.getConf().getAll())
    plan = df._jdf.queryExecution().toString()
    for text in (conf, plan):
        assert material.hex() not in text and "spark-test-passphrase" not in text
    assert ctx.spark.conf.get("spark.io.encryption.enabled") == "true"


def test_turning_protections_off_warns():
    from ppml.errors import PpmlInsecureWarning
    from ppml.spark.session import warn_insecure

    with pytest.warns(PpmlInsecureWarning, match="spark.io.encryption.enabled"):
        warn_insecure({"spark.io.encryption.enabled": "false"}, "local[2]")
    with pytest.warns(PpmlInsecureWarning, match="spark.network.crypto.cipher"):
        warn_insecure({"spark.network.crypto.cipher": "AES/CTR/NoPadding"}, "spark://127.0.0.1:7077")
    with pytest.warns(PpmlInsecureWarning, match="spark.authenticate"):
        warn_insecure({"spark.authenticate": "false"}, "k8s://https://api:6443")
    with pytest.warns(PpmlInsecureWarning, match="spark.network.crypto.enabled is off"):
        warn_insecure({"spark.network.crypto.enabled": "false"}, "spark://127.0.0.1:7077")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_insecure({}, "local[2]")  # the defaults are secure: no warning
        warn_insecure({"spark.network.crypto.enabled": "false"}, "local[2]")  # no wire to protect in one JVM


def test_rpc_is_protected_on_every_master_that_spark_can_give_a_secret():
    from ppml.spark.session import RPC_DEFAULTS, added_settings

    for master in ("local", "local[2]", "local[*]", "local[*, 3]", "spark://127.0.0.1:7077", "yarn",
                   "k8s://https://api:6443"):
        assert RPC_DEFAULTS.items() <= added_settings({"spark.master": master}).items(), master
    # Executor JVMs on loopback need a shared secret Spark does not make up: left as the user set them.
    assert "spark.authenticate" not in added_settings({"spark.master": "local-cluster[2,1,1024]"})
    assert "spark.network.crypto.enabled" not in added_settings({"spark.master": "spark://h:7077",
                                                                 "spark.network.crypto.enabled": "false"})


_SESSION_MASTER = """
import json, os, sys
from pyspark import SparkContext
from ppml.spark.session import session_master
found = [session_master({"spark.master": "spark://given:7077"}), session_master({})]
os.environ["MASTER"] = "yarn"
found.append(session_master({}))
os.environ["SPARK_CONF_DIR"] = sys.argv[1]
found.append(session_master({}))
os.environ["PYSPARK_SUBMIT_ARGS"] = "--name x --master spark://submit:7077 pyspark-shell"
found.append(session_master({}))
print(json.dumps({"masters": found, "jvm": SparkContext._gateway is not None}))
"""


def test_the_master_is_found_as_pyspark_finds_it_without_starting_a_jvm(tmp_path):
    import subprocess
    import sys

    (tmp_path / "spark-defaults.conf").write_text("# comment\nspark.master    spark://defaults:7077\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER", "SPARK_CONF_DIR", "PYSPARK_SUBMIT_ARGS",
                                                             "PYSPARK_GATEWAY_PORT")}
    out = subprocess.run([sys.executable, "-c", _SESSION_MASTER, str(tmp_path)], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert json.loads(out) == {"masters": ["spark://given:7077", "local[*]", "yarn", "spark://defaults:7077",
                                           "spark://submit:7077"], "jvm": False}


_TWO_SESSIONS = """
import sys
from pyspark.sql import SparkSession
from ppml.spark import secure_session

def builder():
    return SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")

spark = secure_session(builder())
conf = dict(spark.sparkContext.getConf().getAll())
print(conf.get("spark.authenticate"), conf.get("spark.network.crypto.enabled"), "spark.authenticate.secret" in conf)
print(spark.range(10).hint("broadcast").count())  # a broadcast mark outside a join, as ppml sets on small reads
spark.range(1).hint("nosuchhint").count()  # a hint problem of the user's own
spark.stop()
print("SECOND SESSION", file=sys.stderr, flush=True)
spark = secure_session(builder().config("spark.network.crypto.enabled", "false"))
spark.stop()
"""


def test_a_local_session_logs_no_false_alarm_and_keeps_the_true_one(tmp_path):
    """In one JVM nothing crosses a wire: Spark's "keys will be visible on the wire" would be false. With
    RPC encryption switched off Spark still says so, and ppml's logging configuration lets it through."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_CONF_DIR", "PYSPARK_SUBMIT_ARGS",
                                                             "PYSPARK_GATEWAY_PORT")}
    done = subprocess.run([sys.executable, "-c", _TWO_SESSIONS], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["true", "true", "False", "10"]  # Spark made up the secret; it is in no conf
    first, _, second = done.stderr.partition("SECOND SESSION")
    alarm = "I/O encryption enabled without RPC encryption"
    assert alarm not in first and alarm in second
    for noise in ("NativeCodeLoader", "Using Spark's default log4j profile", "Setting default log level",
                  "(strategy=broadcast) is specified but it is not part of a join relation"):
        assert noise not in done.stderr
    assert "Unrecognized hint: nosuchhint()" in first  # hints users write themselves are still checked


def test_key_service_options_reach_executors_as_settings_without_secrets():
    from ppml.spark.options import parse_options

    key_settings = KeySettings(kms="pkcs11", pkcs11_token="hsm", pkcs11_pin="file:/run/secrets/pin", azure_vault="kv1",
                           azure_client_id="cid", broker_url="https://b:8443", broker_ca="/etc/ca.pem",
                           broker_attester="tpm", broker_attester_settings='{"ak_handle": "0x81000003"}')
    options = parse_options({"path": "x", **key_settings.to_options()})
    keys = options.keys
    assert keys == key_settings
    assert key_settings.to_options()["pkcs11Pin"] == "file:/run/secrets/pin"  # a source only
    broker = keys.broker()
    assert broker.url == "https://b:8443" and broker.attester_name == "tpm"
    import pickle

    pickle.loads(pickle.dumps(options))  # what Spark ships to each task
