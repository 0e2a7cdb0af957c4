"""``ppml submit`` to Kubernetes: Spark's own submission client (fabric8, in the installed pyspark) creates
the driver pod from ppml's templates against a recording HTTPS stand-in for the API server
(tests/k8s_api_server.py); the pod it sent validates for AKS 1.36 and 1.37, passes checkov, carries the
TEE scheduling and the mounted authentication secret, and no secret value."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_checks import admission_failures, assert_checkov_clean, validate
from k8s_api_server import KubernetesApiServer
from keyvault_server import make_pki

pytest.importorskip("pyspark")
pytestmark = [pytest.mark.slow]

PPML = [sys.executable, "-m", "ppml"]
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
SPARK_ID = "11111111-2222-3333-4444-555555555555"
BROKER_ID = "21111111-2222-3333-4444-555555555555"
MRENCLAVE = "ab" * 32


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Path:
    """An sgx deployment rendered by ppml deploy render."""
    out = tmp_path_factory.mktemp("k8s") / "deploy"
    done = subprocess.run([*PPML, "deploy", "render", "--out", str(out), "--image", "myacr.azurecr.io/ppml:0.1.0",
                           "--tee", "sgx", "--node-pool", "sgxpool", "--mrenclave", MRENCLAVE, "--vault", "kv1",
                           "--tenant-id", TENANT, "--client-id", SPARK_ID, "--broker-client-id", BROKER_ID,
                           "--secret", "keystore-pass"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def api(tmp_path):
    with KubernetesApiServer(make_pki(tmp_path / "pki")) as server:
        token = tmp_path / "token"
        token.write_text(server.token)
        token.chmod(0o600)
        server.token_file = token
        yield server


def _submit(api, deployment: Path, tmp_path: Path, *args: str, ca: Path | None = None) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    # no kubeconfig of this machine may take part: only the CA and token given here
    env = {**{k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}, "HOME": str(home)}
    return subprocess.run(
        [*PPML, "submit", "--master", f"k8s://{api.url}", "--deploy-mode", "cluster", "--deployment", str(deployment),
         "--k8s-ca-cert", str(ca or api.pki.ca_path), "--k8s-token-file", str(api.token_file),
         "--conf", "spark.kubernetes.submission.waitAppCompletion=false", *args],
        env=env, capture_output=True, text=True, timeout=300)


def test_spark_creates_the_driver_pod_from_ppmls_templates(api, deployment, tmp_path):
    done = _submit(api, deployment, tmp_path, "--sgx-enabled", "true", "--sgx-driver-memory", "8g",
                   "--sgx-driver-jvm-memory", "4g", "--driver-memory", "6g", "--sgx-executor-memory", "16g",
                   "ppml", "tpch", "run", "abfs://data/tpch", "abfs://data/out", "aes_gcm_stream", "aes_gcm_stream",
                   "--data-key", "/etc/ppml/data-keys/dk.json")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "--sgx-driver-memory 8g → driver pods request sgx.intel.com/epc: 8Gi" in done.stderr
    pod, = api.created("pods")
    validate(pod)
    # the namespace's admission policy would admit it
    policy = next(yaml.safe_load_all((deployment / "cluster" / "01-admission.yaml").read_text()))
    assert admission_failures(policy, pod) == []
    # checked beside the namespace's network policies, as it runs
    checked = tmp_path / "checked"
    checked.mkdir()
    (checked / "pod.yaml").write_text(yaml.safe_dump(pod))
    (checked / "policies.yaml").write_bytes((deployment / "cluster" / "20-network-policies.yaml").read_bytes())
    assert_checkov_clean(checked, "kubernetes")

    spec = pod["spec"]
    assert pod["metadata"]["namespace"] == "ppml"
    assert spec["serviceAccountName"] == "ppml-spark" and spec["nodeSelector"]["kubernetes.azure.com/agentpool"] == "sgxpool"
    assert {"key": "ppml/tee", "operator": "Equal", "value": "sgx", "effect": "NoSchedule"} in spec["tolerations"]
    driver, = spec["containers"]
    assert driver["image"] == "myacr.azurecr.io/ppml:0.1.0"
    assert driver["resources"]["limits"]["sgx.intel.com/epc"] == "8Gi"
    assert driver["resources"]["limits"]["memory"] == "6144Mi"  # 4g heap + 2g overhead: BigDL's container size
    assert driver["securityContext"]["readOnlyRootFilesystem"] and driver["securityContext"]["runAsNonRoot"]
    args = driver["args"]
    assert args[0] == "driver" and args[args.index("--class") + 1] == "org.apache.spark.deploy.PythonRunner"
    assert args[args.index("--class") + 2].endswith("/ppml/cli/spark_app.py") and "tpch" in args
    env = {e["name"]: e.get("value") for e in driver["env"]}
    assert env["PPML_GRAMINE"] == "sgx" and env["PPML_BROKER_ATTESTER"] == "sgx-gramine"
    assert env["PPML_KEYSTORE_PASSWORD_SOURCE"] == "file:/mnt/secrets-store/keystore-pass"
    assert "_SPARK_AUTH_SECRET" not in env  # the secret is a mounted file, never an environment value

    mounts = {m["name"]: m for m in driver["volumeMounts"]}
    assert mounts["spark-auth"]["mountPath"] == "/etc/ppml/spark-auth" and mounts["spark-auth"]["readOnly"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["spark-auth"]["secret"] == {"secretName": "ppml-spark-auth", "defaultMode": 0o440}
    assert volumes["secrets-store"]["csi"]["volumeAttributes"]["secretProviderClass"] == "ppml-spark"

    # the settings Spark stores beside the pod name the secret files, never a secret
    # (the Spark settings, and the executor template the driver reads)
    config_maps = api.created("configmaps")
    assert len(config_maps) == 2
    properties = "".join(v for config_map in config_maps for v in config_map["data"].values())
    assert "spark.authenticate.secret.driver.file=/etc/ppml/spark-auth/secret" in properties
    assert "spark.authenticate.secret=" not in properties
    secret = (deployment / "spark" / "spark-auth.secret").read_bytes()
    everything = json.dumps([r.body for r in api.requests])
    assert base64.b64encode(secret).decode() not in everything and secret.hex() not in everything
    # Spark's own objects: the driver service and its per-application network policy
    assert api.created("services") and api.created("networkpolicies")


def test_tpch_run_with_a_k8s_master_goes_through_ppml_submit(api, deployment, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [*PPML, "tpch", "run", "abfs://data/tpch", "abfs://data/out", "aes_gcm_stream", "aes_gcm_stream", "1", "6",
         "--data-key", "/etc/ppml/data-keys/dk.json", "--vault", "kv1", "--master", f"k8s://{api.url}",
         "--deployment", str(deployment), "--k8s-ca-cert", str(api.pki.ca_path), "--k8s-token-file",
         str(api.token_file), "--conf", "spark.kubernetes.submission.waitAppCompletion=false"],
        env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    pod, = api.created("pods")
    validate(pod)
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("tpch"):] == ["tpch", "run", "abfs://data/tpch", "abfs://data/out", "aes_gcm_stream",
                                         "aes_gcm_stream", "1", "6", "--data-key", "/etc/ppml/data-keys/dk.json",
                                         "--vault", "kv1"]


def test_the_api_servers_certificate_is_verified(api, deployment, tmp_path):
    """A server whose certificate the given CA did not sign gets nothing: no pod, no token."""
    other = make_pki(tmp_path / "other")
    done = _submit(api, deployment, tmp_path, "job.py", ca=other.ca_path)
    assert done.returncode != 0
    assert not api.requests


def test_dry_run_prints_the_templates_and_creates_nothing(api, deployment, tmp_path):
    done = _submit(api, deployment, tmp_path, "--sgx-enabled", "true", "--sgx-executor-memory", "16g", "--dry-run",
                   "--json", "local:///opt/jobs/report.py")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    executor = plan["pod_templates"]["executor"]["spec"]["containers"][0]
    assert executor["resources"]["limits"]["sgx.intel.com/epc"] == "16Gi"
    assert "the driver pod (from the driver template)" in plan["spark_creates"]
    assert not api.requests
