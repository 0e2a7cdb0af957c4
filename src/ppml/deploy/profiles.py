"""TEE profiles: where Spark and broker pods are scheduled, what they request, how they attest.

===========  ===================================================================================================
profile      what it means on AKS
===========  ===================================================================================================
``none``     development: any node, no attestation (the broker accepts only simulated evidence, if asked to)
``sgx``      an Intel SGX node pool (DCsv3, ``confcom`` add-on): enclave memory as the ``sgx.intel.com/epc``
             extended resource, the quote helper's aesmd socket, the JVM and Python under Gramine; the broker
             pins the enclave measurement (MRENCLAVE) of the signed Gramine manifest
``cvm``      an AMD SEV-SNP confidential-VM node pool (DCasv5/ECasv5): the whole node is the TEE; each pod
             quotes the node's vTPM (a device plugin offers ``/dev/tpmrm0``), the broker pins PCR values
``coco``     confidential containers (Kata, ``--workload-runtime KataCcIsolation``): each pod is its own
             SEV-SNP utility VM, runtime class ``kata-cc-isolation``, the Kata agent policy annotation; MAA
             tokens through the attestation sidecar, the broker pins the policy digest (``hostdata``)
===========  ===================================================================================================

Facts and names come from public sources listed in docs/deploy.md ("Sources").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ppml.deploy import image
from ppml.errors import UsageError

__all__ = ["PROFILES", "TeeSettings", "AGENTPOOL_LABEL", "TAINT_KEY", "KATA_POLICY_ANNOTATION", "KATA_RUNTIME_CLASS"]

PROFILES = ("none", "sgx", "cvm", "coco")
#: The node label AKS gives every node of a node pool (its name).
AGENTPOOL_LABEL = "kubernetes.azure.com/agentpool"
#: The taint ppml's set-up puts on TEE node pools, so that only pods that tolerate it land there.
TAINT_KEY = "ppml/tee"
#: The pod annotation carrying the base64 Rego policy the Kata agent enforces in a confidential container.
KATA_POLICY_ANNOTATION = "io.katacontainers.config.agent.policy"
KATA_RUNTIME_CLASS = "kata-cc-isolation"
#: Intel's SGX device plugin resource names (AKS's confcom add-on offers the first).
SGX_EPC, SGX_ENCLAVE, SGX_PROVISION = "sgx.intel.com/epc", "sgx.intel.com/enclave", "sgx.intel.com/provision"
#: The SEV-SNP attestation sidecar of AKS confidential containers (secure key release, "SKR").
SKR_IMAGE = "mcr.microsoft.com/aci/skr:2.7"
_SKR_REFERENCE_INFO = "/opt/confidential-containers/share/kata-containers/reference-info-base64"
_QUANTITY = re.compile(r"^[1-9]\d*(Ki|Mi|Gi|Ti)?$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class TeeSettings:
    """A TEE profile and what it needs.

    Parameters
    ----------
    profile
        ``none``, ``sgx``, ``cvm`` or ``coco``.
    node_pool
        The AKS node pool (``kubernetes.azure.com/agentpool``) that runs the pods; required for TEE profiles.
    epc_driver, epc_executor
        sgx: enclave memory (EPC) each driver / executor pod requests, as a Kubernetes quantity.
    sgx_plugin
        sgx: ``aks`` (the ``confcom`` add-on's plugin: ``sgx.intel.com/epc``) or ``intel`` (Intel's plugin:
        also ``sgx.intel.com/enclave`` and ``sgx.intel.com/provision``).
    mrenclave, mrsigner, isv_prod_id
        sgx: the measurement(s) of the signed Gramine manifest, or its signer and product id, for the broker.
    tpm_resource, tpm_ca, pcrs
        cvm: the extended resource a device plugin offers for ``/dev/tpmrm0``, the CA file (PEM) that issued
        the vTPM attestation-key certificates, and the PCR values (``{index: hex}``, sha256 bank) to pin.
    cc_policy, maa_endpoint, maa_jwks
        coco: the Kata agent policy (base64, as ``az confcom katapolicygen --print-policy`` prints it), the
        attestation provider's host (``myprovider.weu.attest.azure.net``) and its signing keys (JWKS file).
    simulated
        none: let the broker accept simulated evidence (development only).
    """

    profile: str = "none"
    node_pool: str | None = None
    epc_driver: str = "8Gi"
    epc_executor: str = "8Gi"
    sgx_plugin: str = "aks"
    mrenclave: tuple[str, ...] = ()
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    tpm_resource: str | None = None
    tpm_ca: str | None = None
    pcrs: dict[int, str] = field(default_factory=dict)
    cc_policy: str | None = None
    maa_endpoint: str | None = None
    maa_jwks: str | None = None
    simulated: bool = False

    def check(self, *, broker: bool) -> None:
        """Refuse a profile that lacks what it needs, naming the option to give (nothing is rendered)."""
        if self.profile not in PROFILES:
            raise UsageError(f"--tee {self.profile!r} is not a TEE profile", hint="choose " + ", ".join(PROFILES))
        if self.profile != "none" and not self.node_pool:
            raise UsageError(f"--tee {self.profile} needs --node-pool NAME: the AKS node pool of {self.profile} "
                             "nodes (pods are pinned to it by its kubernetes.azure.com/agentpool label)")
        if self.simulated and self.profile != "none":
            raise UsageError(f"--simulated is for --tee none only: the {self.profile} profile attests for real")
        for name in ("epc_driver", "epc_executor"):
            if not _QUANTITY.match(getattr(self, name)):
                raise UsageError(f"--sgx-{name.split('_')[1]}-epc {getattr(self, name)!r} is not a memory quantity",
                                 hint="e.g. 8Gi or 16384Mi")
        if self.sgx_plugin not in ("aks", "intel"):
            raise UsageError(f"--sgx-plugin {self.sgx_plugin!r}: choose aks (confcom add-on) or intel")
        if self.profile == "sgx" and broker and not (self.mrenclave or self.mrsigner):
            raise UsageError("--tee sgx needs --mrenclave HEX (or --mrsigner HEX with --isv-prod-id N): the broker "
                             "releases keys only to the measured Gramine enclave",
                             hint="gramine-sgx-sigstruct-view ppml.sig prints both (docs/deploy.md, 'Gramine')")
        for value in (*self.mrenclave, *([self.mrsigner] if self.mrsigner else [])):
            if not _HEX64.match(value):
                raise UsageError(f"{value!r} is not a 64-digit hex measurement (--mrenclave / --mrsigner)")
        if self.mrsigner and self.isv_prod_id is None:
            raise UsageError("--mrsigner needs --isv-prod-id N: a signer alone would accept any enclave it signs")
        if self.profile == "cvm":
            if not self.tpm_resource:
                raise UsageError("--tee cvm needs --tpm-resource NAME: the extended resource a device plugin offers "
                                 "for /dev/tpmrm0 (ppml never runs privileged pods to reach the vTPM)")
            if broker and (not self.tpm_ca or not self.pcrs):
                raise UsageError("--tee cvm needs --tpm-ca FILE and at least one --pcr INDEX=HEX: the broker checks "
                                 "the vTPM quote's certificate chain and pins the measured boot")
        if self.profile == "coco":
            if not self.cc_policy:
                raise UsageError("--tee coco needs --cc-policy FILE: the Kata agent policy (base64) from "
                                 "'az confcom katapolicygen --print-policy'")
            self.policy_digest()
            if broker and (not self.maa_endpoint or not self.maa_jwks):
                raise UsageError("--tee coco needs --maa-endpoint HOST and --maa-jwks FILE: the broker verifies "
                                 "MAA tokens against the provider's signing keys (https://HOST/certs)")
        if self.profile == "none" and broker and not self.simulated:
            raise UsageError("--tee none has no TEE evidence for the broker to check",
                             hint="use --no-broker (pods unwrap keys with Key Vault directly) or, for development "
                                  "only, --simulated")

    # -- pods --------------------------------------------------------------------------------------------

    def scheduling(self) -> dict[str, Any]:
        """Pod spec fields that put a pod on the profile's node pool (nodeSelector, tolerations, runtime)."""
        spec: dict[str, Any] = {"nodeSelector": {"kubernetes.io/os": "linux"}}
        if self.profile == "none":
            return spec
        spec["nodeSelector"][AGENTPOOL_LABEL] = self.node_pool
        spec["tolerations"] = [{"key": TAINT_KEY, "operator": "Equal", "value": self.profile, "effect": "NoSchedule"}]
        if self.profile == "sgx":
            # AKS taints SGX pools for EPC users only when the Intel plugin is used; tolerating it is harmless.
            spec["tolerations"].append({"key": SGX_EPC, "operator": "Exists", "effect": "NoSchedule"})
        if self.profile == "coco":
            spec["runtimeClassName"] = KATA_RUNTIME_CLASS
        return spec

    def annotations(self) -> dict[str, str]:
        return {KATA_POLICY_ANNOTATION: str(self.cc_policy).strip()} if self.profile == "coco" else {}

    def resources(self, role: str) -> dict[str, str]:
        """Extended resources a ``driver``, ``executor`` or ``broker`` container requests (and is limited to)."""
        if self.profile == "sgx" and role != "broker":
            extra = {SGX_EPC: self.epc_driver if role == "driver" else self.epc_executor}
            if self.sgx_plugin == "intel":
                extra.update({SGX_ENCLAVE: "1", SGX_PROVISION: "1"})
            return extra
        if self.profile == "cvm" and role != "broker":
            return {str(self.tpm_resource): "1"}
        return {}

    def env(self, role: str) -> list[dict[str, Any]]:
        """Environment variables (no secrets) of the profile's containers."""
        if self.profile == "sgx" and role != "broker":
            # SGX_AESM_ADDR: quotes come from the node's aesmd (out-of-process); PPML_GRAMINE: the entry point
            # starts the JVM and Python under gramine-sgx with the signed manifest.
            return [{"name": "SGX_AESM_ADDR", "value": "1"}, {"name": "PPML_GRAMINE", "value": "sgx"}]
        if self.profile == "cvm" and role != "broker":
            return [{"name": "TPM2TOOLS_TCTI", "value": "device:/dev/tpmrm0"}]
        return []

    def host_paths(self) -> tuple[str, ...]:
        """Host paths the profile's pods mount (the only ones the namespace admits)."""
        return {"sgx": ("/var/run/aesmd",), "coco": (_SKR_REFERENCE_INFO,)}.get(self.profile, ())

    def volumes(self, role: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(volumes, volumeMounts)`` the profile adds."""
        if self.profile == "sgx" and role != "broker":
            return ([{"name": "aesmd", "hostPath": {"path": "/var/run/aesmd", "type": "Directory"}}],
                    [{"name": "aesmd", "mountPath": "/var/run/aesmd"}])
        if self.profile == "coco" and role != "broker":
            return ([{"name": "skr-reference-info", "hostPath": {"path": _SKR_REFERENCE_INFO, "type": "Directory"}}],
                    [])
        return [], []

    def sidecars(self, role: str, container) -> list[dict[str, Any]]:
        """Init containers that run beside the main one for the pod's life (Kubernetes native sidecars).

        ``container(name, image, **fields)`` builds a hardened container.
        """
        if self.profile != "coco" or role == "broker":
            return []
        certcache = {"certcache": {"endpoint_type": "LocalTHIM",
                                   "endpoint": "169.254.169.254/metadata/THIM/amd/certification"}}
        skr = container("skr", SKR_IMAGE, command=["/bin/skr"], cpu="100m", memory="128Mi",
                        env=[{"name": "SkrSideCarArgs",
                              "value": base64.b64encode(json.dumps(certcache).encode()).decode()}],
                        volumeMounts=[{"name": "skr-reference-info", "mountPath": _SKR_REFERENCE_INFO,
                                       "readOnly": True}])
        skr["restartPolicy"] = "Always"
        return [skr]

    # -- attestation ---------------------------------------------------------------------------------------

    def attester(self) -> tuple[str, dict[str, Any]] | None:
        """The attester Spark processes use towards the broker, and its settings."""
        if self.profile == "sgx":
            return "sgx-gramine", {}
        if self.profile == "cvm":
            return "tpm", {"tcti": "device:/dev/tpmrm0", "ak_handle": "0x81000003", "ak_cert_nv_index": "0x01C101D0"}
        if self.profile == "coco":
            return "command", {"argv": [image.SKR_EVIDENCE, "--maa-endpoint", str(self.maa_endpoint)]}
        return ("simulated", {"claims": {"app": "ppml-dev"}}) if self.simulated else None

    def policy_digest(self) -> str:
        """SHA-256 (hex) of the Kata agent policy: the ``x-ms-sevsnpvm-hostdata`` claim of the pod's TEE."""
        try:
            text = base64.b64decode(str(self.cc_policy).strip(), validate=True)
        except binascii.Error:
            raise UsageError("--cc-policy: the file is not base64 (give what 'az confcom katapolicygen "
                             "--print-policy' prints)") from None
        return hashlib.sha256(text).hexdigest()

    def policy_rule(self) -> dict[str, Any]:
        """The broker's ``allow`` rule for this profile's evidence."""
        if self.profile == "sgx":
            rule: dict[str, Any] = {"type": "sgx", "tcb_status": ["UpToDate"]}
            if self.mrenclave:
                rule["mrenclave"] = list(self.mrenclave)
            if self.mrsigner:
                rule.update(mrsigner=self.mrsigner, isv_prod_id=self.isv_prod_id)
            return rule
        if self.profile == "cvm":
            return {"type": "tpm", "pcrs": {"sha256": {int(k): v for k, v in sorted(self.pcrs.items())}}}
        if self.profile == "coco":
            return {"type": "maa", "issuer": f"https://{self.maa_endpoint}",
                    "claims": {"x-ms-attestation-type": "sevsnpvm",
                               "x-ms-compliance-status": "azure-signed-katacc-uvm",
                               "x-ms-sevsnpvm-hostdata": self.policy_digest(),
                               "x-ms-sevsnpvm-is-debuggable": False}}
        return {"type": "simulated", "claims": {"app": "ppml-dev"}}

    def verifier(self, files: str) -> dict[str, Any]:
        """The broker configuration's ``verifiers`` entry; ``files`` is the folder shipping tpm_ca/maa_jwks."""
        if self.profile == "sgx":
            return {"sgx": {}}
        if self.profile == "cvm":
            return {"tpm": {"ca_certificates": [f"{files}/tpm-ca.pem"]}}
        if self.profile == "coco":
            return {"maa": {"jwks": f"{files}/maa-jwks.json", "issuers": [f"https://{self.maa_endpoint}"]}}
        return {"simulated": {}}
