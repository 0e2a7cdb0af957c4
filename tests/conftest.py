"""Shared fixtures. Names are prefixed by the area that owns them (``tree_`` for io/rotation tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The longest test file first: ``make test`` runs ``pytest -n 2 --dist loadfile``, which hands out files in
#: collection order, and the cluster of network hosts started last would be the run's long tail.
_FIRST = ("test_net_cluster.py",)


def pytest_collection_modifyitems(config, items) -> None:
    items.sort(key=lambda item: item.path.name not in _FIRST)  # stable: every other file keeps its order


@pytest.fixture
def tree_kms(tmp_path):
    """A fast local key store at ``tmp_path/ks.json`` (passphrase "pw-tree-passphrase") with primary key ``default`` v1.

    The process-wide cache of unwrapped keys is cleared before and after, so tests cannot pass on keys
    another test unwrapped.
    """
    from keystores import make_keystore

    from ppml.keys.keyring import clear_cache

    clear_cache()
    yield make_keystore(tmp_path / "ks.json", "pw-tree-passphrase", "default")
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
    from keystores import make_data_key, make_keystore

    from ppml.keys.keyring import clear_cache
    from ppml.keys.settings import KeySettings

    clear_cache()
    password_file = tmp_path / "keystore.pass"
    kms = make_keystore(tmp_path / "ks.json", "spark-test-passphrase", "default", passphrase_file=password_file)
    key, _ = make_data_key(kms, "default", tmp_path / "dk.json")

    settings = KeySettings(keystore=str(tmp_path / "ks.json"), passphrase=f"file:{password_file}")
    return {"kms": kms, "keystore": str(tmp_path / "ks.json"), "password_file": str(password_file),
            "data_key": str(tmp_path / "dk.json"), "key": key, "settings": settings}


@pytest.fixture(scope="module")
def cluster_slot(request, tmp_path_factory):
    """Held by a module while it runs a Spark cluster, so that under ``pytest -n 2`` (which ``make test`` runs
    with ``--dist loadfile``, where ``xdist_group`` does not apply) two clusters never share the two cores: the
    other worker waits here instead."""
    import fcntl

    if not hasattr(request.config, "workerinput"):  # one process runs the modules one after another anyway
        yield
        return
    # The workers' temporary folders share this parent, which belongs to this run only.
    with open(tmp_path_factory.getbasetemp().parent / "spark-cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
    from keystores import make_data_key, make_keystore

    from ppml.io.files import encrypt

    root = tmp_path_factory.mktemp("tpch-keys")
    password_file = root / "keystore.pass"
    kms = make_keystore(root / "ks.json", "tpch-test-passphrase", "tpch", passphrase_file=password_file)
    key, wrapped = make_data_key(kms, "tpch", root / "dk.json")
    encrypt(str(tpch_plain), str(root / "encrypted"), key=key, envelope=(wrapped,), segment_size=64 * 1024)
    return {"plain": tpch_plain, "encrypted": root / "encrypted", "keystore": root / "ks.json",
            "password_file": password_file, "data_key": root / "dk.json"}


# -- Azure storage: Azurite -------------------------------------------------------------------------------------
# Azurite (npm) is installed into .azurite/ by scripts/setup.sh (`make test` runs it). One in-memory Blob
# service per test worker, on a free loopback port, started with node directly (killing npx orphans it).

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft; not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_DIR = Path(__file__).resolve().parents[1] / ".azurite"


def _azurite_free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def azurite_endpoint(tmp_path_factory) -> str:
    """The blob endpoint URL (``http://127.0.0.1:PORT/devstoreaccount1``) of a running Azurite.

    Fails under ``CI=true`` when Azurite is not installed; skips locally with a hint.
    """
    import shutil
    import socket
    import subprocess
    import time

    main = AZURITE_DIR / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
    node = shutil.which("node")
    if not main.is_file() or node is None:
        message = (f"Azurite is not installed in {AZURITE_DIR} (or node is missing): run `make test`, "
                   "whose setup installs it with npm (scripts/setup.sh azurite)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("azurite")
    port = _azurite_free_port()
    log = open(workdir / "azurite.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [node, str(main), "--silent", "--disableTelemetry", "--inMemoryPersistence", "--blobHost", "127.0.0.1",
         "--blobPort", str(port), "--skipApiVersionCheck", "--loose"],
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Azurite exited with {proc.returncode}: "
                            + (workdir / "azurite.log").read_text(errors="replace")[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("Azurite did not start listening within 30 s")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def azurite_connection_string(azurite_endpoint) -> str:
    """The connection string of the session's Azurite (well-known ``devstoreaccount1`` key)."""
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={azurite_endpoint};")


@pytest.fixture
def azurite_container(azurite_connection_string, monkeypatch) -> str:
    """A fresh, empty container; ``AZURE_STORAGE_CONNECTION_STRING`` points at Azurite for this test."""
    import uuid

    import adlfs

    for name in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection_string)
    name = f"t{uuid.uuid4().hex[:20]}"
    adlfs.AzureBlobFileSystem(connection_string=azurite_connection_string, skip_instance_cache=True).mkdir(name)
    return name


@pytest.fixture
def restored_registry(monkeypatch):
    """Call it with a :class:`ppml.registry.Registry` to get that registry back as it was after the test, so
    tests may register and replace entries."""

    def restore(registry):
        for attribute in ("_known", "_loaded", "_aliases"):
            monkeypatch.setattr(registry, attribute, dict(getattr(registry, attribute)))
        return registry

    return restore
