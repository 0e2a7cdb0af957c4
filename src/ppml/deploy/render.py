"""Everything one namespace needs, rendered at once and written to a folder, or not at all.

Layout of the folder (``kubectl apply -f DIR/cluster/`` applies the cluster objects in order)::

    cluster/00-namespace.yaml         Namespace, service accounts, Roles and RoleBindings
    cluster/01-admission.yaml         an admission policy refusing pods that are not hardened
    cluster/10-spark-auth.yaml        the Secret with Spark's authentication secret       (mode 0600)
    cluster/20-network-policies.yaml  default deny, then what Spark, the broker and Azure need
    cluster/30-key-vault.yaml         SecretProviderClasses (Key Vault secrets through the CSI driver)
    cluster/40-config.yaml            data-key files (wrapped keys only)
    cluster/50-broker.yaml            the key broker: config, policy, CA, audit volume, Deployment, Service, PDB
    spark/driver-template.yaml        Spark's pod templates (ppml submit passes them)
    spark/executor-template.yaml
    spark/spark-auth.secret           the same authentication secret, for client-mode drivers (mode 0600)
    broker-tls/                       the broker's CA, certificate and key, to store in Key Vault   (key 0600)
    deployment.json                   what ppml submit needs to know about this deployment
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ppml.attest.policy import load_policy
from ppml.broker.scaffold import write_tls_files
from ppml.deploy.broker import TLS_SECRETS, broker_hosts, broker_objects, broker_policy
from ppml.deploy.cluster import (admission_policy, auth_secret, data_keys_config_map, namespace_objects, network_policies,
                                 new_auth_secret, secret_provider_class)
from ppml.deploy.pods import SPARK_CONTAINER, broker_url, spark_pod_template
from ppml.deploy.settings import AUTH_DIR, AUTH_SECRET, BROKER_SA, DATA_KEYS_DIR, SPARK_SA, DeploymentSettings
from ppml.errors import AlreadyExistsError, ConfigError
from ppml.keys import secure_files
from ppml.keys.datakey_file import DataKeyFile

__all__ = ["Rendering", "render", "write", "load_deployment", "DEPLOYMENT_FILE", "redacted"]

DEPLOYMENT_FILE = "deployment.json"
_SECRET_FILES = ("cluster/10-spark-auth.yaml", "spark/spark-auth.secret", "broker-tls/broker-key.pem")


@dataclass
class Rendering:
    """The rendered deployment: files by relative path; ``objects`` are every Kubernetes object, in order."""

    files: dict[str, bytes] = field(default_factory=dict)
    objects: list[dict[str, Any]] = field(default_factory=list)
    deployment: dict[str, Any] = field(default_factory=dict)

    def private(self, path: str) -> bool:
        return path in _SECRET_FILES


def _documents(objects: list[dict[str, Any]]) -> bytes:
    return yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True).encode()


def _read_inputs(settings: DeploymentSettings) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The data-key files (checked to hold wrapped keys only) and the broker's verifier files."""
    data_keys: dict[str, bytes] = {}
    for path in map(Path, settings.data_keys):
        DataKeyFile.load(path)  # refuses anything that is not a data-key file of wrapped keys
        if path.name in data_keys:
            raise ConfigError(f"two data-key files are named {path.name}: the pods see them in one folder")
        data_keys[path.name] = path.read_bytes()
    verifier_files: dict[str, bytes] = {}
    tee = settings.tee
    if settings.broker and tee.profile == "cvm":
        verifier_files["tpm-ca.pem"] = Path(str(tee.tpm_ca)).read_bytes()
    if settings.broker and tee.profile == "coco":
        jwks = Path(str(tee.maa_jwks)).read_bytes()
        try:
            if not isinstance(json.loads(jwks).get("keys"), list):
                raise ValueError
        except (ValueError, AttributeError):
            raise ConfigError(f"--maa-jwks {tee.maa_jwks} is not a JWKS document ({{\"keys\": [...]}})",
                              hint="download it from https://<provider>/certs") from None
        verifier_files["maa-jwks.json"] = jwks
    return data_keys, verifier_files


def _checked_policy(settings: DeploymentSettings) -> None:
    """Load the broker policy with the broker's own parser, so a rendering never ships one it would refuse."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(broker_policy(settings)))
        load_policy(path)


def render(settings: DeploymentSettings, *, auth_value: bytes | None = None) -> Rendering:
    """Render the deployment; ``auth_value`` (default: new random bytes) is Spark's authentication secret."""
    settings.check()
    data_keys, verifier_files = _read_inputs(settings)
    rendering = Rendering()
    value = auth_value or new_auth_secret()
    cluster: dict[str, list[dict[str, Any]]] = {
        "cluster/00-namespace.yaml": namespace_objects(settings),
        "cluster/01-admission.yaml": admission_policy(settings),
        "cluster/10-spark-auth.yaml": [auth_secret(settings, value)],
        "cluster/20-network-policies.yaml": network_policies(settings),
    }
    key_vault = []
    if settings.secrets:
        key_vault.append(secret_provider_class(settings, "ppml-spark", str(settings.client_id),
                                               [{"objectName": s, "objectType": "secret"} for s in settings.secrets]))
    if settings.broker:
        _checked_policy(settings)
        key_vault.append(secret_provider_class(settings, "ppml-broker", str(settings.broker_client_id),
                                               [{"objectName": s, "objectType": "secret"} for s in TLS_SECRETS]))
    if key_vault:
        cluster["cluster/30-key-vault.yaml"] = key_vault
    if data_keys:
        cluster["cluster/40-config.yaml"] = [data_keys_config_map(settings, data_keys)]
    if settings.broker:
        with tempfile.TemporaryDirectory() as tmp:
            ca, cert, key = write_tls_files(Path(tmp), broker_hosts(settings))
            tls = {"broker-tls/ca.pem": ca.read_bytes(), "broker-tls/broker.pem": cert.read_bytes(),
                   "broker-tls/broker-key.pem": key.read_bytes()}
        rendering.files.update(tls)
        cluster["cluster/50-broker.yaml"] = broker_objects(settings, ca_pem=tls["broker-tls/ca.pem"],
                                                            files=verifier_files)
    for path, objects in cluster.items():
        rendering.files[path] = _documents(objects)
        rendering.objects.extend(objects)
    for role in ("driver", "executor"):
        template = spark_pod_template(settings, role)
        rendering.files[f"spark/{role}-template.yaml"] = _documents([template])
        rendering.objects.append(template)
    rendering.files["spark/spark-auth.secret"] = value
    rendering.deployment = {
        "schema": "ppml.deploy/1", "namespace": settings.namespace, "image": settings.image,
        "tee": settings.tee.profile, "service_account": SPARK_SA, "auth_secret": AUTH_SECRET,
        "auth_file": f"{AUTH_DIR}/secret", "containers": dict(SPARK_CONTAINER),
        "data_keys": {name: f"{DATA_KEYS_DIR}/{name}" for name in data_keys},
        "broker": {"url": broker_url(settings), "service_account": BROKER_SA} if settings.broker else None,
        "settings": {k: v for k, v in asdict(settings).items() if k != "tee"},
    }
    rendering.files[DEPLOYMENT_FILE] = (json.dumps(rendering.deployment, indent=2) + "\n").encode()
    return rendering


def write(rendering: Rendering, folder: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``rendering`` into ``folder``: all of it (secrets 0600) or, on any failure, none of it.

    The files are written to a sibling temporary folder first, which then replaces ``folder``; an existing
    ``folder`` is replaced only with ``force`` (its authentication secret is then a new one).
    """
    target = Path(folder)
    if target.exists() and not force:
        raise AlreadyExistsError(f"{target} already exists", hint="choose another folder, or pass --force to "
                                 "replace it (Spark's authentication secret changes: re-apply cluster/)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for relative, content in rendering.files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if rendering.private(relative):
                secure_files.write_private(path, content)
            else:
                path.write_bytes(content)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_deployment(folder: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """``(folder, deployment.json)`` of a rendered deployment, refusing anything else."""
    root = Path(folder)
    path = root / DEPLOYMENT_FILE
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--deployment {root}: no {DEPLOYMENT_FILE} there",
                          hint="render one with: ppml deploy render --out DIR ...") from None
    except ValueError:
        raise ConfigError(f"{path} is not JSON") from None
    if document.get("schema") != "ppml.deploy/1":
        raise ConfigError(f"{path} is not a ppml deployment (schema {document.get('schema')!r})")
    return root, document


def redacted(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Kubernetes object whose Secret values read ``<redacted>`` (for printing)."""
    if obj.get("kind") != "Secret":
        return obj
    return {**obj, "data": {name: "<redacted>" for name in obj.get("data", {})}}
