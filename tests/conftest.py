"""Shared fixtures. Names are prefixed by the area that owns them (``tree_`` for io/rotation tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Argon2id parameters that make a test key store open in milliseconds (never use these for real stores).
TREE_FAST_KDF = {"memory_kib": 1024, "iterations": 1, "lanes": 1}


@pytest.fixture
def tree_kms(tmp_path):
    """A fast local key store at ``tmp_path/ks.json`` (passphrase "pw") with primary key ``default`` v1.

    The process-wide cache of unwrapped keys is cleared before and after, so tests cannot pass on keys
    another test unwrapped.
    """
    from ppml.keys.keyring import clear_cache
    from ppml.keys.local import LocalKms

    clear_cache()
    kms = LocalKms(tmp_path / "ks.json", "pw")
    kms.create_store(kdf=TREE_FAST_KDF)
    kms.create_key("default")
    yield kms
    clear_cache()


@pytest.fixture
def tree_plain(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A nested plaintext tree and the ``{relative path: bytes}`` of its visible (non-hidden) files.

    Hidden entries (``.hidden``, ``a/_SUCCESS``, ``_tmp/x``) are present on disk but not in the dict.
    ``a/b/deep.bin`` spans many 4 KiB segments; ``a/empty.txt`` is empty.
    """
    root = tmp_path / "plain"
    visible = {
        "top.csv": b"id,name\n1,alpha\n2,beta\n",
        "a/b/deep.bin": os.urandom(150_000),
        "a/empty.txt": b"",
        "a/mid.txt": b"hello tree\n" * 500,
    }
    hidden = {".hidden": b"dot", "a/_SUCCESS": b"", "_tmp/x": b"spark temporary"}
    for relative, data in {**visible, **hidden}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root, visible


# -- Spark ----------------------------------------------------------------------------------------------
# One local Spark session per test worker. Tests that use it are marked `xdist_group("spark")` so that,
# under `pytest -n 2 --dist loadgroup`, they share one worker and one JVM.


@pytest.fixture(scope="session")
def spark_session():
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    from ppml.spark import secure_session

    spark = secure_session(
        SparkSession.builder.master("local[2]").appName("ppml-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.driver.memory", "2g")
        .config("spark.ui.showConsoleProgress", "false")
    )
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()


@pytest.fixture
def spark_keys(tmp_path):
    """A fast key store, its passphrase in a 0600 file (how executors read it), and a data-key file."""
    from ppml.keys.datakey_file import DataKeyFile
    from ppml.keys.keyring import clear_cache
    from ppml.keys.local import LocalKms

    clear_cache()
    password_file = tmp_path / "keystore.pass"
    password_file.write_text("spark-test-passphrase")
    password_file.chmod(0o600)
    kms = LocalKms(tmp_path / "ks.json", "spark-test-passphrase")
    kms.create_store(kdf=TREE_FAST_KDF)
    kms.create_key("default")
    key, wrapped = kms.generate_data_key("default")
    DataKeyFile.new(key.key_id, (wrapped,)).save(tmp_path / "dk.json")
    return {"kms": kms, "keystore": str(tmp_path / "ks.json"), "password_file": str(password_file),
            "data_key": str(tmp_path / "dk.json"), "key": key}


# -- TPC-H data ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tpch_plain(tmp_path_factory) -> Path:
    """TPC-H scale 0.01 as plaintext ``.tbl`` files (generated once per test worker)."""
    from ppml.tpch.gen import generate

    out = tmp_path_factory.mktemp("tpch-sf0.01") / "plain"
    generate(0.01, out)
    return out


@pytest.fixture(scope="session")
def tpch_encrypted(tpch_plain, tmp_path_factory) -> dict[str, Path]:
    """The scale 0.01 tables encrypted with ``aes_gcm_stream`` under a fresh key store and data key."""
    from ppml.io.files import encrypt
    from ppml.keys.datakey_file import DataKeyFile
    from ppml.keys.local import LocalKms

    root = tmp_path_factory.mktemp("tpch-keys")
    password_file = root / "keystore.pass"
    password_file.write_text("tpch-test-passphrase")
    password_file.chmod(0o600)
    kms = LocalKms(root / "ks.json", "tpch-test-passphrase")
    kms.create_store(kdf=TREE_FAST_KDF)
    kms.create_key("tpch")
    key, wrapped = kms.generate_data_key("tpch")
    DataKeyFile.new(key.key_id, (wrapped,)).save(root / "dk.json")
    encrypt(str(tpch_plain), str(root / "encrypted"), key=key, envelope=(wrapped,), segment_size=64 * 1024)
    return {"plain": tpch_plain, "encrypted": root / "encrypted", "keystore": root / "ks.json",
            "password_file": password_file, "data_key": root / "dk.json"}
