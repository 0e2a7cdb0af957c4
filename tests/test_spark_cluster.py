"""The distributed path: a real Spark standalone master and two workers on loopback.

The job runs through ``ppml tpch run`` in its own process (the driver), so its executors are separate
JVMs with separate Python workers: each must find the key store and unwrap the data keys itself. The
cluster runs with ``spark.authenticate`` and AES-GCM RPC encryption, as ppml's sessions ask for.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pyspark = pytest.importorskip("pyspark")

pytestmark = [pytest.mark.xdist_group("cluster"), pytest.mark.slow]

SPARK_HOME = Path(pyspark.__file__).parent
PPML = str(Path(sys.executable).with_name("ppml"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"port {port} did not open:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, cluster_slot):
    """``spark://127.0.0.1:PORT`` with two one-core workers, and the shared authentication secret file."""
    root = tmp_path_factory.mktemp("cluster")
    secret = root / "spark-auth.secret"
    secret.write_text(os.urandom(24).hex())
    secret.chmod(0o600)
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(root / "logs"),
        "SPARK_DAEMON_JAVA_OPTS": f"-Dspark.authenticate=true -Dspark.authenticate.secret={secret.read_text()}",
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }
    env.pop("PPML_KEYSTORE_PASSWORD", None)  # executors must use the passphrase file named in the options
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, ui = _free_port(), _free_port()
    processes = []
    try:
        log = root / "master.log"
        master = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(ui)], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        processes.append(master)
        _wait_for_port(port, master, log)
        url = f"spark://127.0.0.1:{port}"
        for index in range(2):
            log = root / f"worker{index}.log"
            worker = subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "1",
                 "--memory", "1g", "--webui-port", str(_free_port()), "--work-dir", str(root / f"work{index}")],
                env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            processes.append(worker)
        deadline = time.monotonic() + 90
        while (root / "master.log").read_text().count("Registering worker") < 2:
            if time.monotonic() > deadline:
                raise RuntimeError((root / "master.log").read_text()[-3000:])
            time.sleep(0.5)
        yield {"url": url, "secret": secret, "root": root}
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_tpch_on_a_standalone_cluster(cluster, tpch_encrypted, tmp_path):
    """Executors in other processes unwrap their own keys; answers match the DuckDB oracle."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PPML_KEYSTORE_PASSWORD"}
    result = subprocess.run(
        [PPML, "tpch", "run", str(tpch_encrypted["encrypted"]), str(out), "aes_gcm_stream", "aes_gcm_stream",
         "1", "3", "6", "12", "14", "--check", "--plaintext", str(tpch_encrypted["plain"]),
         "--data-key", str(tpch_encrypted["data_key"]), "--keystore", str(tpch_encrypted["keystore"]),
         "--passphrase-file", str(tpch_encrypted["password_file"]), "--master", cluster["url"],
         "--auth-secret-file", str(cluster["secret"]),
         "--conf", "spark.executor.memory=768m", "--conf", "spark.cores.max=2", "--json"],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    import json

    report = json.loads(result.stdout)
    assert [q["query"] for q in report["queries"]] == ["Q01", "Q03", "Q06", "Q12", "Q14"]
    assert all(q["checked"] and not q["mismatches"] for q in report["queries"])
    # The executors really were other processes: each worker ran an executor for this application.
    executor_dirs = [p for p in cluster["root"].glob("work*/app-*/*") if p.is_dir()]
    assert len({p.parent.parent.name for p in executor_dirs}) == 2
    assert (out / "TIMES.txt").read_text().startswith("Q01\t")


def test_tpch_with_keys_only_from_the_key_broker(cluster, tpch_encrypted, tmp_path):
    """Driver and executors hold no key store: every data key comes from a real broker after (simulated)
    attestation, sealed to each process's ephemeral key; answers match the oracle; each release is audited."""
    import json

    from broker_harness import BrokerProcess

    broker = BrokerProcess(
        tmp_path / "broker",
        policies=[{"name": "tpch", "keys": ["local:tpch"], "release_lifetime": "10m",
                   "allow": [{"type": "simulated", "claims": {"app": "tpch-e2e"}}]}],
        kms=[{"backend": "local", "keystore": str(tpch_encrypted["keystore"]),
              "passphrase": f"file:{tpch_encrypted['password_file']}"}])
    out = tmp_path / "out"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPML_")}
    env.update(HOME=str(home), PPML_BROKER_URL=broker.url, PPML_BROKER_CA=str(broker.pki.ca_path),
               PPML_BROKER_ATTESTER="simulated", PPML_BROKER_ATTESTER_SETTINGS='{"claims": {"app": "tpch-e2e"}}')
    with broker:
        result = subprocess.run(
            [PPML, "tpch", "run", str(tpch_encrypted["encrypted"]), str(out), "aes_gcm_stream", "aes_gcm_stream",
             "1", "6", "13", "--check", "--plaintext", str(tpch_encrypted["plain"]),
             "--data-key", str(tpch_encrypted["data_key"]), "--master", cluster["url"],
             "--auth-secret-file", str(cluster["secret"]),
             "--conf", "spark.executor.memory=768m", "--conf", "spark.cores.max=2", "--json"],
            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert [q["query"] for q in report["queries"]] == ["Q01", "Q06", "Q13"]
    assert all(q["checked"] and not q["mismatches"] for q in report["queries"])
    releases = [e for e in broker.audit_entries() if e["event"] == "release"]
    assert releases and all(e["decision"] == "allow" and e["evidence"]["simulated"] for e in releases)
    callers = {e["caller"]["declared_name"] for e in releases}
    assert len(callers) >= 2, callers  # the driver and executor processes each attested for themselves
    assert len(releases) == len(callers)  # one data key: one release per process, not per task or file
    assert not (home / ".config").exists()  # nobody fell back to a default key store
