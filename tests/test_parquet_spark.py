"""Encrypted Parquet in Spark: Spark's own reader and writer with ppml's parquet-java key client and key agent,
and the ``ppml`` data source with pyarrow; each reading what the other (and pyarrow alone) wrote; no key in
Spark's configuration or plans; a changed page. (Per-column keys released by a key broker: test_parquet_broker.)"""

from __future__ import annotations

import json
import os

import pytest

pyspark = pytest.importorskip("pyspark")

from pyspark.sql import functions as F  # noqa: E402

import ppml  # noqa: E402
from ppml.errors import IntegrityError, PpmlInsecureWarning  # noqa: E402
from ppml.io.storage import locate  # noqa: E402
from ppml.keys.settings import KeySettings  # noqa: E402
from ppml.parquet import jvm  # noqa: E402
from ppml.parquet.tools import describe  # noqa: E402
from ppml.spark import PPMLContext  # noqa: E402

pytestmark = pytest.mark.xdist_group("spark")
ROWS = 5_000


@pytest.fixture(scope="module")
def keyset(tmp_path_factory):
    """A key store with master keys ``tpch`` and ``pii``, its passphrase in a file, and a data-key file."""
    from keystores import make_data_key, make_keystore

    from ppml.keys.keyring import clear_cache

    clear_cache()
    folder = tmp_path_factory.mktemp("parquet-keys")
    store = make_keystore(folder / "ks.json", "pme passphrase", "tpch", "pii", passphrase_file=folder / "ks.pass")
    make_data_key(store, "tpch", folder / "dk.json")
    return {"folder": folder, "store": store, "data_key": str(folder / "dk.json"),
            "keys": KeySettings(keystore=str(store.path), passphrase=f"file:{folder / 'ks.pass'}")}


@pytest.fixture
def ctx(spark_session, keyset):
    return PPMLContext(spark_session, keys=keyset["keys"], data_key=keyset["data_key"])


def _frame(spark, rows: int = ROWS):
    return spark.range(rows).select(
        F.col("id"), F.concat(F.lit("555-"), F.col("id").cast("string")).alias("phone"),
        (F.col("id") * 0.25).alias("amount"), F.struct((F.col("id") % 7).alias("city")).alias("address"),
        F.expr("date_add(date'1995-01-01', cast(id % 365 as int))").alias("day"))


def _sorted(df):
    return sorted(tuple(r) for r in df.select("id", "phone", "amount", "day").collect())


@pytest.mark.parametrize("writer", ["spark", "pyarrow"])
def test_each_engine_reads_what_the_other_and_pyarrow_wrote(ctx, tmp_path, writer):
    df = _frame(ctx.spark)
    target = str(tmp_path / writer)
    (ctx.write(df).option("parquetEngine", writer).option("columnKeys", "pii:phone,address")
     .mode("overwrite").parquet(target))
    expected = _sorted(df)
    for reader in ("spark", "pyarrow"):
        assert _sorted(ctx.read().option("parquetEngine", reader).parquet(target)) == expected, reader
    alone = ppml.read_parquet(target, keys=ctx.keys, columns=["id", "phone"])
    assert sorted(alone.column("phone").to_pylist()) == sorted(r[1] for r in expected)
    part = next(p for p in os.listdir(target) if p.endswith(".parquet"))
    columns = {c["column"]: c["master_key"] for c in describe(locate(f"{target}/{part}"), ctx.keys)["columns"]}
    assert columns == {"id": "tpch", "phone": "pii", "amount": "tpch", "address.city": "pii", "day": "tpch"}
    assert ppml.verify(target, keys=ctx.keys).failures == []


def test_pyarrow_written_files_read_by_spark_with_plain_options(ctx, tmp_path):
    ppml.write_parquet(_frame(ctx.spark, 100).toArrow(), tmp_path / "t.parquet", keys=ctx.keys, footer_key="tpch",
                       column_keys={"pii": ["phone"]}, plaintext_footer=True)
    # what a Spark user without PPMLContext sets: the options, none of them a key or a secret
    options = jvm.read_options(ctx.keys)
    assert all("pme passphrase" not in v for v in options.values())
    df = ctx.spark.read.options(**options).parquet(str(tmp_path / "t.parquet"))
    assert df.where("id < 10").count() == 10 and df.schema["address"].dataType.names == ["city"]


def test_pruning_and_pushdown_on_the_pyarrow_engine(ctx, tmp_path):
    target = str(tmp_path / "t")
    ctx.write(_frame(ctx.spark)).option("parquetEngine", "pyarrow").mode("overwrite").parquet(target)
    df = ctx.read().option("parquetEngine", "pyarrow").columns("id", "amount").parquet(target)
    assert df.columns == ["id", "amount"]
    assert df.where((F.col("id") >= 100) & (F.col("id") < 110)).agg(F.sum("amount")).first()[0] == sum(
        i * 0.25 for i in range(100, 110))


def test_ctr_mode_plaintext_footer_and_external_key_material(ctx, tmp_path):
    target = str(tmp_path / "ctr")
    with pytest.warns(PpmlInsecureWarning, match="AES_GCM_CTR_V1"):
        (ctx.write(_frame(ctx.spark, 500), "aes_gcm_ctr_v1").option("plaintextFooter", True)
         .option("externalKeyMaterial", True).mode("overwrite").parquet(target))
    part = next(p for p in os.listdir(target) if p.endswith(".parquet"))
    facts = describe(locate(f"{target}/{part}"))
    assert facts["algorithm"] == "AES_GCM_CTR_V1" and facts["footer"] == "plaintext, signed"
    assert facts["key_material"] == "external" and os.path.exists(f"{target}/_KEY_MATERIAL_FOR_{part}.json")
    assert ppml.read_parquet(target, keys=ctx.keys).num_rows == 500


def test_no_key_or_secret_in_spark_conf_or_plans(ctx, tmp_path, keyset):
    target = str(tmp_path / "t")
    ctx.write(_frame(ctx.spark, 100)).mode("overwrite").parquet(target)
    df = ctx.read().parquet(target)
    df.count()
    conf = json.dumps(ctx.spark.sparkContext.getConf().getAll())
    plan = df._jdf.queryExecution().toString()
    for text in (conf, plan):
        assert "pme passphrase" not in text and "wrappedDEK" not in text


def _jobs_run(spark, action) -> int:
    """How many Spark jobs ``action`` starts (once Spark's listeners have heard of them all)."""
    group = f"ppml-test-{os.urandom(4).hex()}"
    spark.sparkContext.setJobGroup(group, "counting jobs")
    try:
        action()
    finally:
        spark.sparkContext._jsc.clearJobGroup()
    spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty()
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))


def test_a_checked_file_schema_is_inferred_once_and_again_when_the_file_changes(ctx, tmp_path):
    target = str(tmp_path / "t.parquet")
    ppml.write_parquet(_frame(ctx.spark, 100).toArrow(), target, keys=ctx.keys, footer_key="tpch")
    assert _jobs_run(ctx.spark, lambda: ctx.read().parquet(target)) >= 1  # Spark reads a footer for the schema
    assert _jobs_run(ctx.spark, lambda: ctx.read().parquet(target)) == 0  # the same checked file: known
    assert ctx.read().parquet(target).where("id < 10").count() == 10
    from keystores import make_keystore

    other = make_keystore(tmp_path / "other.json", "other passphrase", "pii", passphrase_file=tmp_path / "o.pass")
    without_footer_key = PPMLContext(ctx.spark, keys=KeySettings(keystore=str(other.path),
                                                                 passphrase=f"file:{tmp_path / 'o.pass'}"))
    with pytest.raises(Exception, match="tpch"):  # not told the schema that the first reader's keys opened
        without_footer_key.read().parquet(target)
    size = os.path.getsize(target)
    renamed = _frame(ctx.spark, 100).withColumnRenamed("phone", "email").toArrow()
    ppml.write_parquet(renamed, target, keys=ctx.keys, footer_key="tpch", mode="overwrite")
    assert os.path.getsize(target) == size  # same path and size: only the file's identity tells them apart
    again = ctx.read().parquet(target)
    assert "email" in again.columns and again.where("email = '555-7'").count() == 1


_USER_SESSION = """
import sys
from pyspark.sql import SparkSession
from ppml.keys.settings import KeySettings
from ppml.spark import PPMLContext

folder, store, data_key = sys.argv[1:4]
spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
spark.sparkContext.setLogLevel("OFF")
keys = KeySettings(keystore=store, passphrase=f"file:{folder}/ks.pass")
ctx = PPMLContext(spark, keys=keys, data_key=data_key)
ctx.write(spark.range(1000).selectExpr("id", "id * 2 AS twice"), "aes_gcm_v1").parquet(f"{folder}/out")
print(ctx.read("aes_gcm_v1").parquet(f"{folder}/out").count())
# parquet-java's key clients expire from its cache (after a minute); the next read makes new ones
spark._jvm.org.apache.parquet.crypto.keytools.KeyToolkit.removeCacheEntriesForAllTokens()
print(ctx.read("aes_gcm_v1").parquet(f"{folder}/out").agg({"twice": "sum"}).first()[0])
spark.stop()
"""


def test_a_session_the_user_built_reads_after_parquet_java_renews_its_key_clients(keyset, tmp_path):
    """A session built without ppml (no client jar in ``spark.jars``): the client must load wherever
    parquet-java makes one, the driver's Hadoop configuration included (in local mode tasks share it)."""
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "keys"
    shutil.copytree(keyset["folder"], folder)
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_CONF_DIR", "PYSPARK_SUBMIT_ARGS",
                                                             "PYSPARK_GATEWAY_PORT")}
    done = subprocess.run([sys.executable, "-c", _USER_SESSION, str(folder), str(folder / "ks.json"),
                           str(folder / "dk.json")], env=env, capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1000", str(sum(2 * i for i in range(1000)))]


def test_a_changed_page_fails_the_spark_read_and_the_data_set_check_names_files(ctx, tmp_path):
    target = tmp_path / "t"
    ctx.write(_frame(ctx.spark, 5000)).mode("overwrite").parquet(str(target))
    part = next(p for p in sorted(os.listdir(target)) if p.endswith(".parquet"))
    for checksum in target.glob(".*.crc"):  # Hadoop's local checksums would catch it first: leave it to PME
        checksum.unlink()
    data = bytearray((target / part).read_bytes())
    data[200] ^= 0x01
    (target / part).write_bytes(bytes(data))
    with pytest.raises(Exception) as failed:
        ctx.read().parquet(str(target)).collect()  # (count() reads no page: Parquet footers hold row counts)
    assert part in str(failed.value) and "GCM" in str(failed.value)
    (target / "extra.parquet").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="extra.parquet"):
        ctx.read().parquet(str(target))


@pytest.mark.parametrize("engine", ["spark", "pyarrow"])
def test_results_carry_signed_provenance_naming_the_parquet_inputs(ctx, tmp_path, engine):
    from ppml.io.provenance import FOLDER, verify_provenance

    source, out = str(tmp_path / "source"), str(tmp_path / "out")
    ctx.write(_frame(ctx.spark, 500)).option("parquetEngine", engine).parquet(source)
    read = ctx.read().option("parquetEngine", engine).parquet(source)
    ctx.write(read.filter("id < 40")).option("parquetEngine", engine).label("the first forty").parquet(out)
    ring = ctx.keys.keyring()
    report = verify_provenance(locate(out), ring)
    record = json.loads((tmp_path / "out" / FOLDER / "v00000001.json").read_text())
    assert record["query"]["label"] == "the first forty" and len(record["query"]["digest"]) == 64
    [source_input] = record["inputs"]
    assert source_input["path"] == locate(source).url and source_input["version"] == 1
    assert report["inputs"][0]["ok"]
    # An input that no longer holds what was read is told apart.
    victim = next(p for p in sorted((tmp_path / "source").glob("part-*")))
    (tmp_path / "source" / "part-99999-copy.parquet").write_bytes(victim.read_bytes())
    with pytest.raises(IntegrityError, match="part-99999-copy"):
        verify_provenance(locate(out), ring)
