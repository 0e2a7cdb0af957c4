"""``ppml tpch gen|encrypt|run --format parquet`` end to end in its own processes: TPC-H tables as PME data sets
with a column key, queries read by Spark's own Parquet reader through ppml's key client and agent, answers
checked with DuckDB, results written as PME; and no key in Spark's event log, logs or the command's output
(neither the key store passphrase nor any data key or key-encryption key of the files)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyspark")

import ppml  # noqa: E402
from ppml.io.storage import locate  # noqa: E402
from ppml.keys.settings import KeySettings  # noqa: E402
from ppml.parquet import footer as pq_footer  # noqa: E402
from ppml.parquet.datasets import read_file_tail  # noqa: E402
from ppml.parquet.keymaterial import decode_envelope  # noqa: E402
from ppml.parquet.kms import FileKeys  # noqa: E402
from ppml.parquet.tools import describe  # noqa: E402

pytestmark = pytest.mark.xdist_group("spark")
PASSPHRASE = "tpch parquet passphrase"
SOURCE = str(Path(ppml.__file__).resolve().parents[1])


def _secrets(path: Path, keys: KeySettings) -> set[bytes]:
    """The footer and column data keys and key-encryption keys of one PME file, in the forms a log could hold."""
    location = locate(str(path))
    handle = FileKeys(location, read_file_tail(location), keys.keyring())
    columns, _, _ = pq_footer.column_crypto(handle.footer(), name=location.url)
    found = set()
    metadata = [handle.tail.footer_key_metadata] + [c.key_metadata for c in columns if c.key_metadata is not None]
    for item in metadata:
        material = handle.material(item)
        found.add(handle.data_key(material, what="a key"))
        if material.double_wrapping:
            found.add(keys.keyring().unwrap(decode_envelope(material.kms_wrapped, name="kek"), name="kek").unsafe_material())
    forms = set()
    for key in found:
        forms |= {key.hex().encode(), base64.b64encode(key), base64.b64encode(key).rstrip(b"=")}
    return forms


def test_tpch_on_encrypted_parquet_leaks_no_key(tpch_plain, tmp_path):
    from keystores import make_data_key, make_keystore

    plain = tmp_path / "plain"
    shutil.copytree(tpch_plain, plain)
    kms = make_keystore(tmp_path / "ks.json", PASSPHRASE, "tpch", "pii", passphrase_file=tmp_path / "ks.pass")
    make_data_key(kms, "tpch", tmp_path / "dk.json")
    (tmp_path / "events").mkdir()
    env = {**os.environ, "PPML_KEYSTORE": str(tmp_path / "ks.json"), "PPML_KEYSTORE_PASSWORD": PASSPHRASE,
           "PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYSPARK_PYTHON": sys.executable, "SPARK_LOG_DIR": str(tmp_path / "logs")}
    outputs = []

    def ppml_cli(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "ppml", *args], env=env, cwd=tmp_path, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        outputs.append(result.stdout + result.stderr)
        return result

    ppml_cli("tpch", "gen", "--scale", "0.01", "--out", str(plain), "--format", "parquet")
    ppml_cli("tpch", "encrypt", str(plain), "enc", "--format", "parquet", "--data-key", "dk.json",
             "--column-key", "pii:c_phone,c_address")
    keys = KeySettings(keystore=str(tmp_path / "ks.json"), passphrase=f"file:{tmp_path / 'ks.pass'}")
    customer = {c["column"]: c["master_key"] for c in describe(locate(str(tmp_path / "enc/customer.parquet")),
                                                                 keys)["columns"]}
    assert customer["c_phone"] == "pii" and customer["c_name"] == "tpch"
    run = ppml_cli("tpch", "run", "enc", "out", "aes_gcm_v1", "aes_gcm_v1", "10", "--format", "parquet",
                   "--data-key", "dk.json", "--check", "--master", "local[2]", "--json",
                   "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={tmp_path / 'events'}",
                   "--conf", "spark.sql.shuffle.partitions=2")
    report = json.loads(run.stdout)
    assert [q["query"] for q in report["queries"]] == ["Q10"]
    assert all(q["checked"] and not q["mismatches"] and q["rows"] for q in report["queries"])
    assert ppml.read_parquet(tmp_path / "out/Q10", keys=keys).num_rows == report["queries"][0]["rows"]
    [result_file] = sorted((tmp_path / "out/Q10").glob("part-*.parquet"))[:1]
    assert describe(locate(str(result_file)))["algorithm"] == "AES_GCM_V1"
    assert json.loads(ppml_cli("provenance", "verify", "out/Q10", "--json").stdout)["ok"]
    record = json.loads((tmp_path / "out/Q10/_ppml_provenance/v00000001.json").read_text())
    # The four tables read are members of one data set: the record names it and the version read.
    [tables] = record["inputs"]
    assert record["query"]["label"] == "TPC-H Q10" and tables["path"].endswith("/enc") and tables["version"] == 1

    secrets = _secrets(tmp_path / "enc/customer.parquet", keys) | _secrets(result_file, keys)
    secrets.add(PASSPHRASE.encode())
    logs = [p for folder in ("events", "logs") for p in (tmp_path / folder).rglob("*") if p.is_file()]
    assert any(p.parent.name == "events" or "events" in str(p) for p in logs), "no event log was written"
    texts = [p.read_bytes() for p in logs] + [o.encode() for o in outputs]
    leaks = [secret for secret in secrets for text in texts if secret in text]
    assert leaks == []
