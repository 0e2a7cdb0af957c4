"""Hardened containers, and the driver and executor pod templates Spark builds its pods from.

Every container runs as the image's unprivileged user with a read-only root file system, all capabilities
dropped, no privilege escalation, the runtime's default seccomp profile, and resource requests and limits.
Writable space is an in-memory ``/tmp``; Spark adds its own scratch volumes.
"""

from __future__ import annotations

import json
from typing import Any

from ppml.deploy import image
from ppml.deploy.settings import (AUTH_DIR, AUTH_SECRET, BROKER_CA_DIR, BROKER_PORT, DATA_KEYS_DIR, SECRETS_DIR,
                                  SPARK_SA, DeploymentSettings)

__all__ = ["container", "pod_security", "checkov_skips", "spark_pod_template", "SPARK_CONTAINER", "broker_url"]

#: The container names Spark looks for in its templates (spark.kubernetes.*.podTemplateContainerName).
SPARK_CONTAINER = {"driver": "spark-kubernetes-driver", "executor": "spark-kubernetes-executor"}
#: Requests and limits of the Spark containers before Spark sets memory and CPU from its own settings.
_SPARK_RESOURCES = {"driver": ("1", "2g"), "executor": ("1", "4g")}


def container(name: str, image_ref: str, *, cpu: str, memory: str, command: list[str] | None = None,
              args: list[str] | None = None, env: list[dict[str, Any]] | None = None,
              extra: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    """A container that may do nothing but run its program: see the module docstring."""
    limits = {"cpu": cpu, "memory": memory, "ephemeral-storage": "1Gi", **(extra or {})}
    requests = {"cpu": cpu, "memory": memory, "ephemeral-storage": "256Mi", **(extra or {})}
    spec: dict[str, Any] = {
        "name": name, "image": image_ref, "imagePullPolicy": "Always",
        "securityContext": {"runAsNonRoot": True, "runAsUser": image.USER_ID, "runAsGroup": image.GROUP_ID,
                            "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "resources": {"requests": requests, "limits": limits},
    }
    if command:
        spec["command"] = command
    if args:
        spec["args"] = args
    if env:
        spec["env"] = env
    spec.update(fields)
    return spec


def checkov_skips(image_ref: str, role: str) -> dict[str, str]:
    """Static-analysis checks (checkov) that do not apply, each with the reason, as checkov reads them."""
    reasons = []
    if "@sha256:" not in image_ref:
        reasons.append("CKV_K8S_43=the image is pinned by its version tag; give --image REPO@sha256:DIGEST to pin "
                       "the exact bytes")
    if role in ("driver", "executor"):
        reasons += ["CKV_K8S_8=a Spark process is a batch job without a health endpoint; Spark tracks executors "
                    "by heartbeat and replaces lost ones, and the driver's exit ends the application",
                    "CKV_K8S_9=as CKV_K8S_8: Spark pods serve no traffic that a readiness probe could gate"]
    if role == "driver":
        reasons.append("CKV_K8S_38=the driver creates, watches and deletes its executor pods through the "
                       "Kubernetes API with this token (the Role allows nothing else)")
    return {f"checkov.io/skip{index}": reason for index, reason in enumerate(reasons, 1)}


def pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": image.USER_ID, "runAsGroup": image.GROUP_ID,
            "fsGroup": image.GROUP_ID, "seccompProfile": {"type": "RuntimeDefault"}}


def broker_url(settings: DeploymentSettings) -> str:
    return f"https://ppml-broker.{settings.namespace}.svc:{BROKER_PORT}"


def _key_env(settings: DeploymentSettings) -> list[dict[str, Any]]:
    """Where the processes find their keys: Key Vault, the broker, mounted secrets. Names only, no values."""
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}, {"name": "PYSPARK_PYTHON", "value": image.PYTHON}]
    if settings.vault:
        env.append({"name": "PPML_AZURE_VAULT", "value": settings.vault})
    if "keystore-pass" in settings.secrets:
        env.append({"name": "PPML_KEYSTORE_PASSWORD_SOURCE", "value": f"file:{SECRETS_DIR}/keystore-pass"})
    attester = settings.tee.attester()
    if settings.broker and attester is not None:
        name, attester_settings = attester
        env += [{"name": "PPML_BROKER_URL", "value": broker_url(settings)},
                {"name": "PPML_BROKER_CA", "value": f"{BROKER_CA_DIR}/ca.pem"},
                {"name": "PPML_BROKER_ATTESTER", "value": name},
                {"name": "PPML_BROKER_ATTESTER_SETTINGS", "value": json.dumps(attester_settings, sort_keys=True)}]
    return env


def spark_pod_template(settings: DeploymentSettings, role: str) -> dict[str, Any]:
    """The ``driver`` or ``executor`` pod template (``spark.kubernetes.{role}.podTemplateFile``).

    Spark fills in the command, its own environment, ports, memory and CPU; the template brings the rest:
    the TEE profile's scheduling and resources, the authentication secret (mode 0440, read by the pod's
    group only), Key Vault secrets through the CSI driver, the broker's CA and the data-key files.
    """
    tee = settings.tee
    tee_volumes, tee_mounts = tee.volumes(role)
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"}},
        {"name": "spark-auth", "secret": {"secretName": AUTH_SECRET, "defaultMode": 0o440}},
        *tee_volumes,
    ]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"},
                                    {"name": "spark-auth", "mountPath": AUTH_DIR, "readOnly": True}, *tee_mounts]
    if settings.secrets:
        volumes.append({"name": "secrets-store", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True,
                                                         "volumeAttributes": {"secretProviderClass": "ppml-spark"}}})
        mounts.append({"name": "secrets-store", "mountPath": SECRETS_DIR, "readOnly": True})
    if settings.broker:
        volumes.append({"name": "broker-ca", "configMap": {"name": "ppml-broker-ca"}})
        mounts.append({"name": "broker-ca", "mountPath": BROKER_CA_DIR, "readOnly": True})
    if settings.data_keys:
        volumes.append({"name": "data-keys", "configMap": {"name": "ppml-data-keys"}})
        mounts.append({"name": "data-keys", "mountPath": DATA_KEYS_DIR, "readOnly": True})
    cpu, memory = _SPARK_RESOURCES[role]
    main = container(SPARK_CONTAINER[role], settings.image, cpu=cpu, memory=memory, env=[*_key_env(settings),
                     *tee.env(role)], extra=tee.resources(role), volumeMounts=mounts)
    labels = {"app.kubernetes.io/name": "ppml", "app.kubernetes.io/component": f"spark-{role}"}
    if settings.client_id:
        labels["azure.workload.identity/use"] = "true"
    metadata: dict[str, Any] = {"namespace": settings.namespace, "labels": labels,
                                "annotations": {**checkov_skips(settings.image, role), **tee.annotations()}}
    spec: dict[str, Any] = {
        "serviceAccountName": SPARK_SA,
        # the driver creates and watches executor pods through the API; executors never call it
        "automountServiceAccountToken": role == "driver",
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        **tee.scheduling(),
        "containers": [main],
        "volumes": volumes,
    }
    sidecars = tee.sidecars(role, container)
    if sidecars:
        spec["initContainers"] = sidecars
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
