"""The key broker on the cluster: configuration, release policy, TLS, Deployment, Service, PodDisruptionBudget.

The broker holds no key material at rest: its primary key stays in Key Vault (unwrapped there with the
broker's own workload identity, the only identity allowed to), its TLS certificate and private key come from
Key Vault secrets through the Secrets Store CSI driver, and its configuration and policy are plain config
maps. Each replica writes its own hash-chained, signed audit log to a shared Azure Files volume; the audit
signing key exists only wrapped by the Key Vault key :data:`AUDIT_KEY_NAME` (a Key Vault secret holds the
wrapped file, made with ``ppml broker audit new-key --config broker-audit/broker.yaml``). Without a shared
nonce store each replica accepts only the nonces it issued, so the Service keeps a client's connections on
one replica (``sessionAffinity: ClientIP``); with ``--broker-redis`` the replicas share the nonce secret and
the used nonces (Redis ``SET NX``), and any replica may answer. Replay protection never depends on which
replica answers.
"""

from __future__ import annotations

from typing import Any

import yaml

from ppml.deploy import image
from ppml.deploy.pods import checkov_skips, container, pod_security
from ppml.deploy.settings import BROKER_PORT, BROKER_SA, SECRETS_DIR, DeploymentSettings

__all__ = ["broker_config", "broker_policy", "broker_objects", "TLS_SECRETS", "BROKER_SECRETS", "AUDIT_KEY_SECRET",
           "AUDIT_KEY_NAME", "NONCE_SECRETS", "broker_hosts", "audit_key_config", "broker_secrets"]

#: Key Vault secrets holding the broker's certificate chain and private key (PEM).
TLS_SECRETS = ("ppml-broker-tls-cert", "ppml-broker-tls-key")
#: The Key Vault secret holding the broker's audit key file (the key only wrapped) and the Key Vault key
#: wrapping it (no policy governs it, so it is never released).
AUDIT_KEY_SECRET = "ppml-broker-audit-key"
AUDIT_KEY_NAME = "ppml-broker-audit"
#: Every Key Vault secret the broker mounts (and, with a shared Redis, :data:`NONCE_SECRETS` too).
BROKER_SECRETS = (*TLS_SECRETS, AUDIT_KEY_SECRET)
#: With ``--broker-redis``: the nonce secret the replicas share and the Redis access key.
NONCE_SECRETS = ("ppml-broker-nonce-secret", "ppml-broker-redis-password")


def broker_secrets(settings: DeploymentSettings) -> tuple[str, ...]:
    """The Key Vault secrets the broker pods mount."""
    return (*BROKER_SECRETS, *(NONCE_SECRETS if settings.broker_redis else ()))
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
    nonces = {"nonces": {"secret": f"file:{SECRETS_DIR}/{NONCE_SECRETS[0]}",
                         "redis": {"url": settings.broker_redis, "password": f"file:{SECRETS_DIR}/{NONCE_SECRETS[1]}"}}}
    return {**(nonces if settings.broker_redis else {}), "listen": {"host": "0.0.0.0", "port": BROKER_PORT},
            "tls": {"certificate": f"{SECRETS_DIR}/{TLS_SECRETS[0]}", "private_key": f"{SECRETS_DIR}/{TLS_SECRETS[1]}"},
            "kms": [{"backend": "azure", "vault": settings.vault}],
            "verifiers": settings.tee.verifier(_FILES_DIR),
            "policies": [f"{_CONFIG_DIR}/policies/"],
            "audit_log": f"{_AUDIT_DIR}/broker.jsonl",
            "audit_key": f"{SECRETS_DIR}/{AUDIT_KEY_SECRET}",
            "limits": {"max_request_bytes": 262144, "requests_per_second": 20, "burst": 40, "nonce_lifetime": "60s"},
            "key_cache": "5m"}


def audit_key_config(settings: DeploymentSettings) -> dict[str, Any]:
    """The broker configuration for making the audit key on an operator's machine, in the rendered folder's
    ``broker-audit/`` (TLS files from ``../broker-tls/``, verifier files and the policy beside it):
    ``ppml broker audit new-key --config broker-audit/broker.yaml --key-name ppml-broker-audit`` writes
    ``audit-key.json`` (stored as the Key Vault secret :data:`AUDIT_KEY_SECRET`) and ``audit-key.json.pub``
    (publish it: auditors verify the log with it)."""
    return {**{k: v for k, v in broker_config(settings).items() if k != "nonces"}, "listen": {"host": "127.0.0.1", "port": BROKER_PORT},
            "tls": {"certificate": "../broker-tls/broker.pem", "private_key": "../broker-tls/broker-key.pem"},
            "verifiers": settings.tee.verifier("."), "policies": ["policy.yaml"], "audit_log": "audit.jsonl",
            "audit_key": "audit-key.json"}


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
                  # Each replica accepts only the nonces it issued (no shared nonce store here): a pod's
                  # connections stay with one replica, so a reconnect between nonce and release still works.
                  **({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 3600}}}
                     if settings.broker_replicas > 1 and not settings.broker_redis else {}),
                  "ports": [{"name": "https", "port": BROKER_PORT, "targetPort": "https", "protocol": "TCP"}]}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(settings, "ppml-broker"),
         # one replica may go (node upgrades) while another serves; a single replica must be allowed to go
         "spec": {**({"minAvailable": settings.broker_replicas - 1} if settings.broker_replicas > 1
                     else {"maxUnavailable": 1}), "selector": {"matchLabels": selector}}},
    ]
    return objects
