"""Checks shared by the deployment tests: official Kubernetes schemas, the SecretProviderClass CRD, checkov.

Kubernetes versions: the two newest minor versions AKS supports (AKS's "Supported Kubernetes versions" page,
MicrosoftDocs/azure-aks-docs articles/aks/supported-kubernetes-versions.md: 1.36 GA June 2026, 1.37 GA
October 2026), validated with the official OpenAPI schemas that kubernetes-validate 1.37.0 ships for 1.32 to
1.37 (``kubernetes_validate.utils.all_versions()``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

AKS_VERSIONS = ("1.36", "1.37")
ROOT = Path(__file__).resolve().parents[1]
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

# The openAPIV3Schema of SecretProviderClass secrets-store.csi.x-k8s.io/v1, as published by the Secrets Store
# CSI driver (kubernetes-sigs/secrets-store-csi-driver v1.6.0, deploy/secrets-store.csi.x-k8s.io_secretproviderclasses
# .yaml), transcribed without its descriptions. The API server prunes unknown fields of a structural schema,
# so unknown fields are errors here: they would silently vanish on a cluster.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SECRET_PROVIDER_CLASS_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "secrets-store.csi.x-k8s.io/v1"},
        "kind": {"const": "SecretProviderClass"},
        "metadata": {"type": "object"},
        "status": {"type": "object"},
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "provider": {"type": "string"},
            "parameters": _STRING_MAP,
            "secretObjects": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
                "annotations": _STRING_MAP, "labels": _STRING_MAP, "secretName": {"type": "string"},
                "type": {"type": "string"},
                "data": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
                    "key": {"type": "string"}, "objectName": {"type": "string"}}}}}}},
        }},
    },
}
# Parameters the Azure Key Vault provider reads (Azure/secrets-store-csi-driver-provider-azure,
# pkg/provider/types) and the fields of each entry of "objects".
AZURE_PARAMETERS = {"keyvaultName", "cloudName", "usePodIdentity", "useVMManagedIdentity", "userAssignedIdentityID",
                    "tenantId", "cloudEnvFileName", "clientID", "objects"}
AZURE_OBJECT_FIELDS = {"objectName", "objectAlias", "objectVersion", "objectVersionHistory", "objectType",
                       "objectFormat", "objectEncoding", "filePermission"}


def validate(obj: dict) -> None:
    """Validate ``obj`` for both AKS versions (strict: unknown fields are errors), CRDs by their schema."""
    if obj.get("kind") == "SecretProviderClass":
        jsonschema.validate(obj, SECRET_PROVIDER_CLASS_SCHEMA)
        # its metadata is an ordinary ObjectMeta: checked with the official schema, on a ConfigMap
        meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
        parameters = obj["spec"]["parameters"]
        assert set(parameters) <= AZURE_PARAMETERS, set(parameters) - AZURE_PARAMETERS
        for entry in yaml.safe_load(parameters["objects"])["array"]:
            assert set(yaml.safe_load(entry)) <= AZURE_OBJECT_FIELDS
        obj = meta
    for version in AKS_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def checkov_path() -> Path:
    """checkov, installed the way `make test` installs it (scripts/setup.sh checkov) when it is missing."""
    if not CHECKOV.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "checkov"], cwd=ROOT, check=True)
    return CHECKOV


def checkov(target: Path, framework: str) -> list[dict]:
    """checkov's reports on ``target`` (a file or folder), run offline (--skip-download)."""
    flag = "-d" if target.is_dir() else "-f"
    done = subprocess.run([str(checkov_path()), "--skip-download", "--compact", flag, str(target),
                           "--framework", framework, "-o", "json"], capture_output=True, text=True, timeout=600)
    assert done.stdout.strip(), done.stderr[-2000:]
    reports = json.loads(done.stdout)
    return reports if isinstance(reports, list) else [reports]


def assert_checkov_clean(target: Path, framework: str) -> list[dict]:
    """No failed check; every skipped one carries its reason. Returns the skipped checks."""
    reports = checkov(target, framework)
    failed = [(f["check_id"], f["resource"], f["check_name"]) for r in reports for f in r["results"]["failed_checks"]]
    assert not failed, failed
    assert sum(r["summary"]["passed"] for r in reports) > 0
    skipped = [s for r in reports for s in r["results"]["skipped_checks"]]
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment") or "") > 20, check
    return skipped


def admission_failures(policy: dict, pod: dict) -> list[str]:
    """The messages of the ValidatingAdmissionPolicy's validations that ``pod`` fails, evaluated with a CEL
    implementation (cel-python) as the API server would."""
    celpy = pytest.importorskip("celpy")
    environment = celpy.Environment()
    activation: dict = {"object": celpy.json_to_cel(pod)}
    variables = {}
    for variable in policy["spec"].get("variables", []):
        program = environment.program(environment.compile(variable["expression"]))
        variables[variable["name"]] = program.evaluate(activation)
    activation["variables"] = celpy.celtypes.MapType({celpy.celtypes.StringType(k): v for k, v in variables.items()})
    failed = []
    for validation in policy["spec"]["validations"]:
        result = environment.program(environment.compile(validation["expression"])).evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), (validation["expression"], result)
        if not result:
            failed.append(validation["message"])
    return failed
