"""The key broker on the cluster: configuration, release policy, TLS, Deployment, Service, PodDisruptionBudget.

The broker holds no key material at rest: its primary key stays in Key Vault (unwrapped there with the
broker's own workload identity, the only identity allowed to), its TLS certificate and private key come from
Key Vault secrets through the Secrets Store CSI driver, and its configuration and policy are plain config
maps. Each replica writes its own hash-chained audit log to a shared Azure Files volume.
"""

from __future__ import annotations

from typing import Any

import yaml

from ppml.deploy import image
from ppml.deploy.pods import checkov_skips, container, pod_security
from ppml.deploy.settings import BROKER_PORT, BROKER_SA, SECRETS_DIR, DeploymentSettings

__all__ = ["broker_config", "broker_policy", "broker_objects", "TLS_SECRETS", "broker_hosts"]

#: Key Vault secrets holding the broker's certificate chain and private key (PEM).
TLS_SECRETS = ("ppml-broker-tls-cert", "ppml-broker-tls-key")
_CONFIG_DIR = "/etc/ppml-broker"
_FILES_DIR = f"{_CONFIG_DIR}/files"
_AUDIT_DIR = "/var/lib/ppml-broker/audit"


def broker_hosts(settings: DeploymentSettings) -> list[str]:
    """The names Spark pods use for the broker (its certificate covers them)."""
    ns = settings.namespace
    return [f"ppml-broker.{ns}.svc", f"ppml-broker.{ns}.svc.cluster.local", f"ppml-broker.{ns}"]


def broker_policy(settings: DeploymentSettings) -> dict[str, Any]:
    """The release policy: data keys of the Key Vault key, only to the profile's measured workload."""
    return {"name": f"ppml-{settings.namespace}",
            "keys": [f"azure:https://{str(settings.vault).lower()}.vault.azure.net/keys/{settings.broker_key.lower()}"],
            "release_lifetime": "10m", "allow": [settings.tee.policy_rule()]}


def broker_config(settings: DeploymentSettings) -> dict[str, Any]:
    return {"listen": {"host": "0.0.0.0", "port": BROKER_PORT},
            "tls": {"certificate": f"{SECRETS_DIR}/{TLS_SECRETS[0]}", "private_key": f"{SECRETS_DIR}/{TLS_SECRETS[1]}"},
            "kms": [{"backend": "azure", "vault": settings.vault}],
            "verifiers": settings.tee.verifier(_FILES_DIR),
            "policies": [f"{_CONFIG_DIR}/policies/"],
            "audit_log": f"{_AUDIT_DIR}/broker.jsonl",
            "limits": {"max_request_bytes": 262144, "requests_per_second": 20, "burst": 40, "nonce_lifetime": "60s"},
            "key_cache": "5m"}


def _meta(settings: DeploymentSettings, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": settings.namespace,
            "labels": {"app.kubernetes.io/name": "ppml", "app.kubernetes.io/component": "broker"}}


def broker_objects(settings: DeploymentSettings, *, ca_pem: bytes, files: dict[str, bytes]) -> list[dict[str, Any]]:
    """ConfigMaps (configuration and policy; the CA for clients), the audit volume claim, Deployment, Service
    and PodDisruptionBudget. ``files`` are verifier files (``tpm-ca.pem``, ``maa-jwks.json``) for the config."""
    selector = {"app.kubernetes.io/name": "ppml", "app.kubernetes.io/component": "broker"}
    config_files = {"broker.yaml": yaml.safe_dump(broker_config(settings), sort_keys=False),
                    "policy.yaml": yaml.safe_dump(broker_policy(settings), sort_keys=False)}
    probe = {"httpGet": {"path": "/v1/health", "port": BROKER_PORT, "scheme": "HTTPS"}, "periodSeconds": 10,
             "timeoutSeconds": 3}
    main = container(
        "broker", settings.image, cpu="500m", memory="512Mi", command=[f"{image.VENV}/bin/ppml"],
        args=["broker", "serve", "--config", f"{_CONFIG_DIR}/broker.yaml"],
        env=[{"name": "HOME", "value": "/tmp"}],
        ports=[{"name": "https", "containerPort": BROKER_PORT, "protocol": "TCP"}],
        readinessProbe=probe, livenessProbe={**probe, "initialDelaySeconds": 15},
        volumeMounts=[
            {"name": "config", "mountPath": f"{_CONFIG_DIR}/broker.yaml", "subPath": "broker.yaml", "readOnly": True},
            {"name": "config", "mountPath": f"{_CONFIG_DIR}/policies/policy.yaml", "subPath": "policy.yaml",
             "readOnly": True},
            *([{"name": "files", "mountPath": _FILES_DIR, "readOnly": True}] if files else []),
            {"name": "tls", "mountPath": SECRETS_DIR, "readOnly": True},
            # one folder per replica: each keeps its own hash chain
            {"name": "audit", "mountPath": _AUDIT_DIR, "subPathExpr": "$(POD_NAME)"},
            {"name": "tmp", "mountPath": "/tmp"}])
    main["env"].append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": "ppml-broker-config"}},
        {"name": "tls", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True,
                                "volumeAttributes": {"secretProviderClass": "ppml-broker"}}},
        {"name": "audit", "persistentVolumeClaim": {"claimName": "ppml-broker-audit"}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]
    if files:
        volumes.append({"name": "files", "configMap": {"name": "ppml-broker-files"}})
    tee = settings.tee
    pod_spec: dict[str, Any] = {
        "serviceAccountName": BROKER_SA, "automountServiceAccountToken": False, "enableServiceLinks": False,
        "securityContext": pod_security(), **tee.scheduling(),
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": selector}}],
        "containers": [main], "volumes": volumes}
    template_meta: dict[str, Any] = {"labels": {**selector, "azure.workload.identity/use": "true"}}
    deployment_meta = _meta(settings, "ppml-broker")
    skips = checkov_skips(settings.image, "broker")
    if skips:
        deployment_meta["annotations"] = skips
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(settings, "ppml-broker-config"), "data": config_files},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(settings, "ppml-broker-ca"),
         "data": {"ca.pem": ca_pem.decode()}},
    ]
    if files:
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(settings, "ppml-broker-files"),
                        "data": {name: content.decode() for name, content in sorted(files.items())}})
    objects += [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(settings, "ppml-broker-audit"),
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "azurefile-csi-premium",
                  "resources": {"requests": {"storage": "100Gi"}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": deployment_meta,
         "spec": {"replicas": settings.broker_replicas, "selector": {"matchLabels": selector},
                  "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                  "template": {"metadata": template_meta, "spec": pod_spec}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(settings, "ppml-broker"),
         "spec": {"type": "ClusterIP", "selector": selector,
                  "ports": [{"name": "https", "port": BROKER_PORT, "targetPort": "https", "protocol": "TCP"}]}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(settings, "ppml-broker"),
         # one replica may go (node upgrades) while another serves; a single replica must be allowed to go
         "spec": {**({"minAvailable": settings.broker_replicas - 1} if settings.broker_replicas > 1
                     else {"maxUnavailable": 1}), "selector": {"matchLabels": selector}}},
    ]
    return objects
