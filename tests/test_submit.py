"""``ppml submit`` for real: TPC-H through spark-submit on a local master and on a standalone master with two
workers (answers checked against DuckDB), the dry run, BigDL's flags and settings, and refused input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_spark_cluster import cluster  # noqa: F401 - the standalone master + 2 workers fixture

PPML = [sys.executable, "-m", "ppml"]
pytestmark = [pytest.mark.xdist_group("cluster"), pytest.mark.slow]


def _env() -> dict[str, str]:
    # the executors must take the passphrase from the file named in the options, not from this environment
    return {k: v for k, v in os.environ.items() if not k.startswith("PPML_")}


def _tpch_args(tpch, out, *queries: str) -> list[str]:
    return ["ppml", "tpch", "run", str(tpch["encrypted"]), str(out), "aes_gcm_stream", "aes_gcm_stream", *queries,
            "--check", "--plaintext", str(tpch["plain"]), "--scale", "0.01", "--data-key", str(tpch["data_key"]),
            "--keystore", str(tpch["keystore"]), "--passphrase-file", str(tpch["password_file"]), "--json"]


def _checked(result: subprocess.CompletedProcess, queries: int) -> dict:
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert len(report["queries"]) == queries
    assert all(q["checked"] and not q["mismatches"] for q in report["queries"]), report
    return report


def test_all_22_queries_submitted_to_a_standalone_cluster(cluster, tpch_encrypted, tmp_path):  # noqa: F811
    """spark-submit in client mode: the executors on the two workers authenticate with the cluster's
    secret (given in a 0600 properties file) and unwrap the data keys themselves."""
    out = tmp_path / "out"
    result = subprocess.run(
        [*PPML, "submit", "--master", cluster["url"], "--auth-secret-file", str(cluster["secret"]),
         "--name", "tpch-22", "--executor-memory", "768m", "--total-executor-cores", "2",
         "--conf", "spark.sql.shuffle.partitions=4", *_tpch_args(tpch_encrypted, out)],
        env=_env(), capture_output=True, text=True, timeout=1200)
    report = _checked(result, 22)
    print(f"standalone: 22 queries, {report['total_seconds']:.1f} s of query time")
    assert cluster["secret"].read_text() not in result.stderr + result.stdout
    executor_dirs = [p for p in cluster["root"].glob("work*/app-*/*") if p.is_dir()]
    assert len({p.parent.parent.name for p in executor_dirs}) == 2  # both workers ran executors
    assert (out / "TIMES.txt").read_text().count("\n") == 22


def test_queries_submitted_to_a_local_master(tpch_encrypted, tmp_path):
    result = subprocess.run([*PPML, "submit", "--master", "local[2]", "--driver-memory", "2g",
                             *_tpch_args(tpch_encrypted, tmp_path / "out", "1", "6", "13")],
                            env=_env(), capture_output=True, text=True, timeout=600)
    _checked(result, 3)


def test_a_pyspark_application_gets_the_key_settings(tpch_encrypted, tmp_path):
    """PPMLContext(spark) in any application takes the key settings ppml submit was given (spark.ppml.keys.*):
    the driver and its executors open the key store with the passphrase file named there."""
    app = tmp_path / "count_orders.py"
    app.write_text(
        "import sys\n"
        "from pyspark.sql import SparkSession\n"
        "from ppml.spark import PPMLContext\n"
        "ctx = PPMLContext(SparkSession.builder.getOrCreate())\n"
        "rows = ctx.read().option('sep', '|').csv(sys.argv[1]).count()\n"
        "print('ORDERS', rows, ctx.keys.keystore == sys.argv[2])\n")
    result = subprocess.run([*PPML, "submit", "--master", "local[2]", "--keystore", str(tpch_encrypted["keystore"]),
                             "--passphrase-file", str(tpch_encrypted["password_file"]), str(app),
                             str(tpch_encrypted["encrypted"] / "orders.tbl.ppml"), str(tpch_encrypted["keystore"])],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ORDERS 15000 True" in result.stdout


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    # options before the application: everything after it belongs to the application
    return subprocess.run([*PPML, "submit", "--dry-run", *args], capture_output=True, text=True, timeout=120)


def test_dry_run_shows_the_command_and_redacts_the_secret(tmp_path):
    secret = tmp_path / "spark.secret"
    secret.write_text("s3cr3t-value-of-the-cluster")
    secret.chmod(0o600)
    done = _dry_run("--master", "spark://127.0.0.1:7077", "--auth-secret-file", str(secret), "--vault", "kv1",
                    "--json", "job.py", "--input", "x")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    command = plan["command"]
    assert command[-3:] == ["job.py", "--input", "x"]
    conf = dict(c.split("=", 1) for c in command[command.index("--conf") + 1::2] if "=" in c)
    assert conf["spark.authenticate"] == "true" and conf["spark.network.crypto.cipher"] == "AES/GCM/NoPadding"
    assert conf["spark.io.encryption.enabled"] == "true" and conf["spark.ppml.keys.azureVault"] == "kv1"
    assert plan["properties_file"] == {"spark.authenticate.secret": "<redacted>"}
    assert "s3cr3t" not in done.stdout + done.stderr
    secret.chmod(0o644)
    done = _dry_run("--master", "spark://127.0.0.1:7077", "--auth-secret-file", str(secret), "job.py")
    assert done.returncode == 7 and "accessible to other users" in done.stderr


def test_bigdl_settings_are_mapped_and_shown(tmp_path):
    done = _dry_run("--master", "local[2]", "--conf", "spark.bigdl.kms.type=AzureKeyManagementService",
                    "--conf", "spark.bigdl.kms.azure.vault=kv1", "--conf", "spark.bigdl.kms.azure.clientId=cid",
                    "--conf", "spark.bigdl.kms.key.data=/ppml/keys/dk", "job.py")
    assert done.returncode == 0, done.stderr
    assert "spark.ppml.keys.kms=azure" in done.stdout and "spark.ppml.keys.azureVault=kv1" in done.stdout
    assert "spark.ppml.keys.azureClientId=cid" in done.stdout
    assert "# mapped: spark.bigdl.kms.type=AzureKeyManagementService → --kms azure" in done.stdout
    assert "spark.bigdl" not in done.stdout.split("\n")[1]  # nothing BigDL-specific reaches spark-submit


@pytest.mark.parametrize("args, code, message", [
    (["--conf", "spark.authenticate.secret=abc"], 2, "--conf spark.authenticate.secret=… puts a secret on the command"),
    (["--conf", "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net=KEY"], 2, "puts a secret on the command"),
    (["--conf", "spark.bigdl.primaryKey.pk.plainText=AAAA"], 2, "puts a secret on the command line"),
    (["--conf", "spark.bigdl.kms.type=EHSMKeyManagementService"], 2, "is not a key type ppml runs"),
    (["--conf", "spark.io.encryption.enabled=false"], 2, "would turn off a protection"),
    (["--sgx-enabled", "true"], 2, "--sgx-enabled true needs a k8s:// master"),
    (["--sgx-enabled", "false", "--sgx-executor-memory", "8g"], 2, "--sgx-executor-memory contradict(s) --sgx-enabled"),
    (["--sgx-enable", "true"], 2, "No such option: --sgx-enable"),
    (["--master", "yarn"], 2, "--master 'yarn' is not a master ppml submits to"),
    (["--master", "k8s://http://10.0.0.1:6443"], 2, "must be reached over https"),
    (["--master", "k8s://https://10.0.0.1:6443"], 2, "a k8s:// master needs --deployment DIR"),
    (["--master", "spark://127.0.0.1:7077"], 2, "a spark:// master needs --auth-secret-file FILE"),
    (["--deploy-mode", "cluster"], 2, "--deploy-mode cluster needs a spark:// or k8s:// master"),
    (["--auth-secret-file", "/dev/null"], 2, "--auth-secret-file is for spark:// masters"),
])
def test_refused_input_names_the_flag(args, code, message):
    done = _dry_run(*args, "job.py")
    assert done.returncode == code, done.stderr
    assert message in done.stderr
