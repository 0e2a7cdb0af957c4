"""The namespace-wide objects: namespace, identities and RBAC, network policies, secrets, Key Vault access.

Compared with BigDL PPML's deployment: the Spark service account gets a namespaced Role limited to what
Spark's driver does (no cluster-wide ``edit``, no Secrets); no kubeconfig is mounted anywhere; keys never
sit in Kubernetes Secrets (Key Vault secrets reach pods through the Secrets Store CSI driver, read with the
pod's own workload identity); and every pod is cut off from everything but what it must reach.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from ppml.deploy.settings import AUTH_SECRET, BROKER_PORT, BROKER_SA, SPARK_SA, DeploymentSettings

__all__ = ["namespace_objects", "admission_policy", "auth_secret", "network_policies", "secret_provider_class", "data_keys_config_map",
           "SPARK_RBAC_RESOURCES", "new_auth_secret"]

#: What Spark's driver manages in its namespace: executor pods, their config maps, services and volume claims.
SPARK_RBAC_RESOURCES = ("pods", "services", "configmaps", "persistentvolumeclaims")
_DRIVER_VERBS = ["get", "list", "watch", "create", "patch", "delete", "deletecollection"]
# Ports of Spark's driver (RPC, block manager), its executors (block manager; Spark picks random RPC ports
# for executors only when told to) and the broker.
_DRIVER_PORTS = (7078, 7079)
_PRIVATE = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]


def _meta(settings: DeploymentSettings, name: str, component: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": settings.namespace,
            "labels": {"app.kubernetes.io/name": "ppml", "app.kubernetes.io/component": component}, **extra}


def new_auth_secret() -> bytes:
    """32 random bytes for ``spark.authenticate`` (Spark reads the file's bytes and uses their base64)."""
    return secrets.token_bytes(32)


def namespace_objects(settings: DeploymentSettings) -> list[dict[str, Any]]:
    """Namespace (restricted pod security), service accounts, the driver's Role and the submitters' Role."""
    ns = settings.namespace
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {
            "app.kubernetes.io/name": "ppml",
            # Pod Security Admission "restricted" refuses every pod not hardened like ppml's own. The sgx and
            # coco pods mount one host path each (the aesmd socket, the attestation sidecar's reference data),
            # which even "baseline" forbids: there the admission policy below enforces the same rules with
            # exactly those paths allowed, and PSA only warns and audits.
            "pod-security.kubernetes.io/enforce": "privileged" if settings.tee.host_paths() else "restricted",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted"}}}]
    spark_sa: dict[str, Any] = {"apiVersion": "v1", "kind": "ServiceAccount",
                                "metadata": _meta(settings, SPARK_SA, "spark"), "automountServiceAccountToken": False}
    if settings.client_id:
        spark_sa["metadata"]["annotations"] = {"azure.workload.identity/client-id": settings.client_id}
    objects.append(spark_sa)
    objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": _meta(settings, "ppml-spark-driver", "spark"),
                    "rules": [{"apiGroups": [""], "resources": list(SPARK_RBAC_RESOURCES), "verbs": _DRIVER_VERBS}]})
    objects.append(_binding(settings, "ppml-spark-driver", "ppml-spark-driver",
                            [{"kind": "ServiceAccount", "name": SPARK_SA, "namespace": ns}]))
    # Who submits creates the driver pod and what Spark creates beside it (service, config map, network policy).
    objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": _meta(settings, "ppml-spark-submitter", "spark"),
                    "rules": [{"apiGroups": [""], "resources": list(SPARK_RBAC_RESOURCES),
                               "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
                              {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                               "verbs": ["get", "create", "patch", "delete"]},
                              {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]})
    if settings.submitters:
        subjects = [{"kind": who.partition(":")[0].capitalize(), "name": who.partition(":")[2],
                     "apiGroup": "rbac.authorization.k8s.io"} for who in settings.submitters]
        objects.append(_binding(settings, "ppml-spark-submitter", "ppml-spark-submitter", subjects))
    if settings.broker:
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": _meta(settings, BROKER_SA, "broker",
                                          annotations={"azure.workload.identity/client-id": settings.broker_client_id}),
                        "automountServiceAccountToken": False})
    return objects


def admission_policy(settings: DeploymentSettings) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy (and its binding to the namespace) refusing pods that are not hardened:
    host namespaces, host paths other than the profile's own, privileged or escalating containers, added or
    undropped capabilities, writable root file systems, root users, containers without CPU and memory limits."""
    allowed = ", ".join(f"'{path}'" for path in settings.tee.host_paths())
    name = f"ppml-{settings.namespace}-hardened-pods"
    checks = [
        ("!has(object.spec.volumes) || object.spec.volumes.all(v, !has(v.hostPath)"
         + (f" || v.hostPath.path in [{allowed}])" if allowed else ")"),
         "no host paths" + (f" but {allowed}" if allowed else "")),
        ("!(has(object.spec.hostNetwork) && object.spec.hostNetwork) && !(has(object.spec.hostPID) && "
         "object.spec.hostPID) && !(has(object.spec.hostIPC) && object.spec.hostIPC)", "no host namespaces"),
        ("variables.containers.all(c, has(c.securityContext) && has(c.securityContext.allowPrivilegeEscalation) && "
         "c.securityContext.allowPrivilegeEscalation == false && !(has(c.securityContext.privileged) && "
         "c.securityContext.privileged) && has(c.securityContext.readOnlyRootFilesystem) && "
         "c.securityContext.readOnlyRootFilesystem && has(c.securityContext.capabilities) && "
         "has(c.securityContext.capabilities.drop) && 'ALL' in c.securityContext.capabilities.drop && "
         "!has(c.securityContext.capabilities.add))",
         "every container unprivileged, without privilege escalation, with a read-only root file system and all "
         "capabilities dropped"),
        ("(has(object.spec.securityContext) && has(object.spec.securityContext.runAsNonRoot) && "
         "object.spec.securityContext.runAsNonRoot) || variables.containers.all(c, has(c.securityContext) && "
         "has(c.securityContext.runAsNonRoot) && c.securityContext.runAsNonRoot)", "no container runs as root"),
        ("variables.containers.all(c, has(c.resources) && has(c.resources.limits) && 'cpu' in c.resources.limits "
         "&& 'memory' in c.resources.limits)", "every container has CPU and memory limits"),
    ]
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "ppml"}},
              "spec": {"failurePolicy": "Fail",
                       "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                               "operations": ["CREATE", "UPDATE"],
                                                               "resources": ["pods"]}]},
                       "variables": [{"name": "containers", "expression": "object.spec.containers + "
                                      "(has(object.spec.initContainers) ? object.spec.initContainers : [])"}],
                       "validations": [{"expression": expression, "message": f"ppml pods: {message}"}
                                       for expression, message in checks]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "ppml"}},
               "spec": {"policyName": name, "validationActions": ["Deny"],
                        "matchResources": {"namespaceSelector": {"matchLabels": {
                            "kubernetes.io/metadata.name": settings.namespace}}}}}
    return [policy, binding]


def _binding(settings: DeploymentSettings, name: str, role: str, subjects: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": _meta(settings, name, "spark"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role}, "subjects": subjects}


def auth_secret(settings: DeploymentSettings, value: bytes) -> dict[str, Any]:
    """The Secret holding the ``spark.authenticate`` secret, mounted by driver and executor pods as a file."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(settings, AUTH_SECRET, "spark"), "immutable": True,
            "data": {"secret": base64.b64encode(value).decode()}}


def _pods(*components: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "In", "values": list(components)}]}


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def network_policies(settings: DeploymentSettings) -> list[dict[str, Any]]:
    """Deny everything in the namespace, then allow exactly the paths Spark, the broker and Azure need.

    Executors reach the driver, other executors of the namespace (shuffle blocks), the broker, DNS and
    HTTPS outside the cluster (Azure Storage, Key Vault and Microsoft Entra ID for workload identity; private
    ranges and the instance metadata endpoint excluded, so pods cannot borrow the node's identity). The
    driver also reaches the Kubernetes API to manage its executors. The broker is reachable only from Spark
    pods, and reaches only Key Vault and Entra ID.
    """
    def policy(name: str, selector: dict[str, Any], ingress: list, egress: list) -> dict[str, Any]:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": _meta(settings, name, "network"),
                "spec": {"podSelector": selector, "policyTypes": ["Ingress", "Egress"],
                         "ingress": ingress, "egress": egress}}

    dns = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                   "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
           "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    azure = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": _PRIVATE}},
                    *({"ipBlock": {"cidr": cidr}} for cidr in settings.egress_cidrs)], "ports": _tcp(443)}
    spark = {"podSelector": _pods("spark-driver", "spark-executor")}
    broker = [{"to": [{"podSelector": _pods("broker")}], "ports": _tcp(BROKER_PORT)}] if settings.broker else []
    objects = [
        policy("ppml-default-deny", {}, [], []),
        policy("ppml-spark-executors", _pods("spark-executor"),
               [{"from": [spark]}],
               [{"to": [{"podSelector": _pods("spark-driver")}], "ports": _tcp(*_DRIVER_PORTS)},
                {"to": [{"podSelector": _pods("spark-executor")}]}, *broker, dns, azure]),
        # The Kubernetes API server of AKS is outside the pod network (public or private endpoint) on 443.
        policy("ppml-spark-driver", _pods("spark-driver"),
               [{"from": [{"podSelector": _pods("spark-executor")}], "ports": _tcp(*_DRIVER_PORTS)}],
               [{"to": [{"podSelector": _pods("spark-executor")}]}, *broker, dns,
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": _PRIVATE[-1:]}}], "ports": _tcp(443)}]),
    ]
    if settings.broker:
        objects.append(policy("ppml-broker", _pods("broker"), [{"from": [spark], "ports": _tcp(BROKER_PORT)}],
                              [dns, azure]))
    return objects


def secret_provider_class(settings: DeploymentSettings, name: str, client_id: str,
                          objects: list[dict[str, str]]) -> dict[str, Any]:
    """A SecretProviderClass (Azure Key Vault provider of the Secrets Store CSI driver) with workload identity.

    ``objects`` are Key Vault objects (``objectName``, ``objectType``...). No Kubernetes Secret is synced
    from them: they exist only as files in the pods that mount them.
    """
    array = [json.dumps(obj, sort_keys=True) for obj in objects]
    return {"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
            "metadata": _meta(settings, name, "key-vault"),
            "spec": {"provider": "azure", "parameters": {
                "usePodIdentity": "false", "clientID": client_id, "keyvaultName": str(settings.vault),
                "tenantId": str(settings.tenant_id), "cloudName": "",
                # the provider reads "objects" as YAML: {array: [one YAML (here JSON) document per object]}
                "objects": json.dumps({"array": array})}}}


def data_keys_config_map(settings: DeploymentSettings, files: dict[str, bytes]) -> dict[str, Any]:
    """Data-key files (wrapped keys only: useless without the KMS or broker) for the pods."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(settings, "ppml-data-keys", "spark"),
            "immutable": True, "data": {name: content.decode() for name, content in sorted(files.items())}}

