"""Per-column access through the key broker: a policy releases the master key of some columns and not another's;
a Spark job after (simulated) attestation reads the released columns on both engines and gets an error naming
the key for the other, and the broker's audit log records both decisions."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pyspark")

from pyspark.sql import functions as F  # noqa: E402

import ppml  # noqa: E402
from ppml.errors import KeyAccessError  # noqa: E402
from ppml.keys.settings import KeySettings  # noqa: E402
from ppml.spark import PPMLContext  # noqa: E402

pytestmark = pytest.mark.xdist_group("spark")


@pytest.fixture
def keyset(tmp_path):
    from keystores import make_data_key, make_keystore

    from ppml.keys.keyring import clear_cache

    clear_cache()
    store = make_keystore(tmp_path / "ks.json", "pme passphrase", "tpch", "pii", passphrase_file=tmp_path / "ks.pass")
    make_data_key(store, "tpch", tmp_path / "dk.json")
    return {"folder": tmp_path, "data_key": str(tmp_path / "dk.json"),
            "keys": KeySettings(keystore=str(store.path), passphrase=f"file:{tmp_path / 'ks.pass'}")}


def _frame(spark, rows: int):
    return spark.range(rows).select(
        F.col("id"), F.concat(F.lit("555-"), F.col("id").cast("string")).alias("phone"),
        (F.col("id") * 0.25).alias("amount"), F.struct((F.col("id") % 7).alias("city")).alias("address"))


def test_a_broker_releases_one_column_key_and_not_another(spark_session, keyset, tmp_path):
    from broker_harness import SIMULATED_POLICY, BrokerProcess

    target = str(tmp_path / "customers")
    writer = PPMLContext(spark_session, keys=keyset["keys"], data_key=keyset["data_key"])
    writer.write(_frame(spark_session, 1000)).option("columnKeys", "pii:phone,address").mode("overwrite").parquet(target)
    folder = keyset["folder"]
    kms = [{"backend": "local", "keystore": str(folder / "ks.json"), "passphrase": f"file:{folder / 'ks.pass'}"}]
    with BrokerProcess(tmp_path / "broker", kms=kms, policies=[SIMULATED_POLICY]) as broker:  # releases local:tpch*
        attested = KeySettings(keystore=str(tmp_path / "no-keystore.json"), broker_url=broker.url,
                               broker_ca=str(broker.pki.ca_path), broker_attester="simulated",
                               broker_attester_settings='{"claims": {"app": "tpch"}}')
        from ppml.keys.keyring import clear_cache

        clear_cache()
        reader = PPMLContext(spark_session, keys=attested)
        for engine in ("spark", "pyarrow"):
            allowed = reader.read().option("parquetEngine", engine).columns("id", "amount").parquet(target)
            assert allowed.agg(F.sum("id")).first()[0] == sum(range(1000)), engine
            with pytest.raises(Exception) as refused:
                reader.read().option("parquetEngine", engine).columns("id", "phone").parquet(target).collect()
            assert "pii" in str(refused.value), engine
        with pytest.raises(KeyAccessError, match="column 'phone'"):
            ppml.read_parquet(target, keys=attested, columns=["phone"])
        audit = [json.loads(line) for line in broker.audit_log.read_text().splitlines()]
        decisions = {(e.get("key"), e.get("decision")) for e in audit if e.get("event") == "release"}
        assert ("local:tpch", "allow") in decisions and ("local:pii", "deny") in decisions
