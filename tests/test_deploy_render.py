"""``ppml deploy render`` and ``ppml deploy azure``: every object of every TEE profile validates against the
official schemas of the two newest AKS versions, passes checkov, and holds no secret it should not."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_checks import admission_failures, assert_checkov_clean, validate

PPML = [sys.executable, "-m", "ppml"]
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
SPARK_ID = "11111111-2222-3333-4444-555555555555"
BROKER_ID = "21111111-2222-3333-4444-555555555555"
IMAGE = "myacr.azurecr.io/ppml:0.1.0"
COMMON = ["--image", IMAGE, "--vault", "kv1", "--tenant-id", TENANT, "--client-id", SPARK_ID, "--broker-client-id",
          BROKER_ID, "--broker-key", "tpch", "--secret", "keystore-pass", "--submitter", "group:data-team"]


def _ppml(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*PPML, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A data-key file, a Kata policy, an MAA JWKS and a vTPM CA, as a user would have them."""
    from keystores import make_data_key, make_keystore

    root = tmp_path_factory.mktemp("deploy-inputs")
    key, _ = make_data_key(make_keystore(root / "ks.json", "pw", "tpch"), "tpch", root / "dk.json")
    (root / "policy.b64").write_text(base64.b64encode(b"package agent_policy\n\ndefault CreateContainerRequest := true\n")
                                     .decode())
    (root / "jwks.json").write_text(json.dumps({"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}))
    from ppml.broker.scaffold import write_tls_files

    ca, _, _ = write_tls_files(root / "tpm", ["tpm-ca"])
    return {"data_key": root / "dk.json", "policy": root / "policy.b64", "jwks": root / "jwks.json", "tpm_ca": ca,
            "key": key}


PROFILE_ARGS = {
    "none": ["--tee", "none", "--simulated"],
    "sgx": ["--tee", "sgx", "--node-pool", "sgxpool", "--mrenclave", "ab" * 32, "--sgx-plugin", "intel"],
    "cvm": ["--tee", "cvm", "--node-pool", "cvmpool", "--tpm-resource", "squat.ai/tpmrm", "--pcr", f"7={'cd' * 32}"],
    "coco": ["--tee", "coco", "--node-pool", "ccpool", "--maa-endpoint", "myattest.weu.attest.azure.net"],
}


def _profile_args(profile: str, inputs) -> list[str]:
    extra = {"cvm": ["--tpm-ca", str(inputs["tpm_ca"])],
             "coco": ["--cc-policy", str(inputs["policy"]), "--maa-jwks", str(inputs["jwks"])]}.get(profile, [])
    return [*PROFILE_ARGS[profile], *extra, "--data-key", str(inputs["data_key"])]


def _objects(folder: Path) -> list[dict]:
    return [doc for path in sorted(folder.rglob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def _containers(obj: dict) -> list[dict]:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj.get("spec", {})
    return [*spec.get("containers", []), *spec.get("initContainers", [])] if obj["kind"] in ("Pod", "Deployment") else []


@pytest.mark.parametrize("profile", ["none", "sgx", "cvm", "coco"])
def test_rendered_objects_validate_and_pass_checkov(profile, inputs, tmp_path):
    out = tmp_path / "deploy"
    _ppml("deploy", "render", "--out", str(out), *COMMON, *_profile_args(profile, inputs))
    objects = _objects(out)
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == sorted({"Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret", "NetworkPolicy",
                            "SecretProviderClass", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
                            "PodDisruptionBudget", "Pod", "ValidatingAdmissionPolicy",
                            "ValidatingAdmissionPolicyBinding"})
    for obj in objects:
        validate(obj)
    skipped = assert_checkov_clean(out, "kubernetes")
    assert {s["check_id"] for s in skipped} <= {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_38", "CKV_K8S_43"}

    # every container hardened, with requests and limits
    containers = [c for obj in objects for c in _containers(obj)]
    assert len(containers) >= 3
    for container in containers:
        security = container["securityContext"]
        assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
        assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][part])

    # the namespace's admission policy admits ppml's own pods and refuses weakened ones
    policy = next(o for o in objects if o["kind"] == "ValidatingAdmissionPolicy")
    pods = [o if o["kind"] == "Pod" else {"spec": o["spec"]["template"]["spec"]}
            for o in objects if o["kind"] in ("Pod", "Deployment")]
    for pod in pods:
        assert admission_failures(policy, pod) == []
    weakened = json.loads(json.dumps(pods[0]))
    weakened["spec"]["containers"][0]["securityContext"]["privileged"] = True
    weakened["spec"]["volumes"].append({"name": "root", "hostPath": {"path": "/"}})
    assert len(admission_failures(policy, weakened)) == 2

    # no Secret but Spark's authentication secret; keys only wrapped; no key material in env values
    secrets = [o for o in objects if o["kind"] == "Secret"]
    assert [s["metadata"]["name"] for s in secrets] == ["ppml-spark-auth"]
    data_keys = next(o for o in objects if o["metadata"].get("name") == "ppml-data-keys")
    from ppml.keys.datakey_file import DataKeyFile

    record = DataKeyFile.parse(data_keys["data"]["dk.json"].encode(), name="dk.json")
    assert record.key_id == inputs["key"].key_id
    text = "\n".join(p.read_text() for p in out.rglob("*.yaml"))
    material = inputs["key"].unsafe_material()
    assert base64.b64encode(material).decode() not in text and material.hex() not in text

    # the driver's Role: namespaced, its own resources, never secrets; no cluster-wide role at all
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Role"}
    driver_rule, = roles["ppml-spark-driver"]["rules"]
    assert sorted(driver_rule["resources"]) == ["configmaps", "persistentvolumeclaims", "pods", "services"]
    assert not any(o["kind"].startswith("Cluster") for o in objects)
    assert all("secrets" not in r["resources"] for role in roles.values() for r in role["rules"])

    # secret files are 0600
    for private in ("cluster/10-spark-auth.yaml", "spark/spark-auth.secret", "broker-tls/broker-key.pem"):
        assert stat.S_IMODE((out / private).stat().st_mode) == 0o600, private

    # the TEE scheduling of the pod templates
    driver = yaml.safe_load((out / "spark" / "driver-template.yaml").read_text())
    spec = driver["spec"]
    if profile == "none":
        assert "kubernetes.azure.com/agentpool" not in spec["nodeSelector"]
    else:
        assert spec["nodeSelector"]["kubernetes.azure.com/agentpool"] == PROFILE_ARGS[profile][3]
        assert {"key": "ppml/tee", "operator": "Equal", "value": profile, "effect": "NoSchedule"} in spec["tolerations"]
    limits = spec["containers"][0]["resources"]["limits"]
    if profile == "sgx":
        assert limits["sgx.intel.com/epc"] == "8Gi" and limits["sgx.intel.com/enclave"] == "1"
        assert {"name": "aesmd", "mountPath": "/var/run/aesmd"} in spec["containers"][0]["volumeMounts"]
    if profile == "cvm":
        assert limits["squat.ai/tpmrm"] == "1"
    if profile == "coco":
        assert spec["runtimeClassName"] == "kata-cc-isolation"
        assert driver["metadata"]["annotations"]["io.katacontainers.config.agent.policy"] == \
            inputs["policy"].read_text()
        assert spec["initContainers"][0]["restartPolicy"] == "Always"  # the attestation sidecar


def test_broker_policy_pins_the_measurement(inputs, tmp_path):
    """The broker's ConfigMap holds a configuration and a policy that the broker itself accepts."""
    from ppml.attest.policy import load_policy

    out = tmp_path / "deploy"
    _ppml("deploy", "render", "--out", str(out), *COMMON, *_profile_args("coco", inputs))
    config = next(o for o in _objects(out) if o["metadata"].get("name") == "ppml-broker-config")
    (tmp_path / "policy.yaml").write_text(config["data"]["policy.yaml"])
    policy = load_policy(tmp_path / "policy.yaml")
    assert policy.governs("azure:https://kv1.vault.azure.net/keys/tpch")
    rule = yaml.safe_load(config["data"]["policy.yaml"])["allow"][0]
    import hashlib

    digest = hashlib.sha256(base64.b64decode(inputs["policy"].read_text())).hexdigest()
    assert rule["claims"]["x-ms-sevsnpvm-hostdata"] == digest
    broker = yaml.safe_load(config["data"]["broker.yaml"])
    assert broker["kms"] == [{"backend": "azure", "vault": "kv1"}]
    assert broker["verifiers"]["maa"]["issuers"] == ["https://myattest.weu.attest.azure.net"]


def test_dry_run_prints_every_object_with_secrets_redacted(inputs, tmp_path):
    out = tmp_path / "never"
    done = _ppml("deploy", "render", "--out", str(out), *COMMON, *_profile_args("sgx", inputs), "--dry-run")
    documents = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert not out.exists()
    _ppml("deploy", "render", "--out", str(tmp_path / "real"), *COMMON, *_profile_args("sgx", inputs))
    assert [d["kind"] for d in documents] == [d["kind"] for d in _objects(tmp_path / "real")]
    secret, = [d for d in documents if d["kind"] == "Secret"]
    assert secret["data"] == {"secret": "<redacted>"}


@pytest.mark.parametrize("args, message", [
    (["--tee", "coco", "--node-pool", "ccpool"], "--tee coco needs --cc-policy FILE"),
    (["--tee", "sgx"], "--tee sgx needs --node-pool NAME"),
    (["--tee", "sgx", "--node-pool", "sgxpool"], "--tee sgx needs --mrenclave HEX"),
    (["--tee", "cvm", "--node-pool", "cvmpool"], "--tee cvm needs --tpm-resource NAME"),
    (["--tee", "none"], "--tee none has no TEE evidence for the broker to check"),
    (["--tee", "tdx"], "--tee 'tdx' is not a TEE profile"),
    (["--tee", "sgx", "--node-pool", "p", "--mrenclave", "xyz"], "'xyz' is not a 64-digit hex measurement"),
])
def test_a_profile_without_what_it_needs_renders_nothing(args, message, tmp_path):
    out = tmp_path / "deploy"
    done = _ppml("deploy", "render", "--out", str(out), *COMMON, *args, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unpinned_image_and_existing_folder_are_refused(tmp_path):
    done = _ppml("deploy", "render", "--out", str(tmp_path / "d"), "--image", "myacr.azurecr.io/ppml:latest",
                 "--no-broker", check=False)
    assert done.returncode == 2 and "is not pinned" in done.stderr
    _ppml("deploy", "render", "--out", str(tmp_path / "d"), "--image", IMAGE, "--no-broker")
    done = _ppml("deploy", "render", "--out", str(tmp_path / "d"), "--image", IMAGE, "--no-broker", check=False)
    assert done.returncode == 6 and "already exists" in done.stderr


def test_azure_setup_commands(tmp_path):
    done = _ppml("deploy", "azure", "-g", "rg-ppml", "--cluster", "aks-ppml", "--vault", "kv-ppml",
                 "--storage-account", "ppmlsa", "--tee", "sgx", "--node-pool", "sgxpool", "--secret", "keystore-pass")
    script = done.stdout
    for expected in ("--enable-rbac-authorization true --enable-purge-protection true",
                     "--enable-hierarchical-namespace true", "--allow-shared-key-access false",
                     "--enable-oidc-issuer --enable-workload-identity", "azure-keyvault-secrets-provider,confcom",
                     "--enable-sgxquotehelper", "--node-taints ppml/tee=sgx:NoSchedule",
                     "--subject system:serviceaccount:ppml:ppml-spark", "--subject system:serviceaccount:ppml:ppml-broker",
                     '"Key Vault Crypto User" --scope "$VAULT_ID/keys/ppml"', '"Key Vault Secrets User"',
                     '"Storage Blob Data Contributor" --scope "$STORAGE_ID/blobServices/default/containers/data"'):
        assert expected in script, expected
    for forbidden in ("--client-secret", "--privileged", "clusterrole=edit", "account-key", "all"):
        assert f" {forbidden} " not in f" {script} ".replace("\n", " "), forbidden
    (tmp_path / "setup.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "setup.sh")], check=True)  # it is a valid shell script
    done = _ppml("deploy", "azure", "-g", "rg", "--cluster", "c", "--vault", "kv-ppml", "--storage-account", "Bad_Name",
                 check=False)
    assert done.returncode == 2 and "--storage-account 'Bad_Name'" in done.stderr
