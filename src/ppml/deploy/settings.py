"""What one deployment is made of: a namespace, an image, a TEE profile, identities, Key Vault, the broker."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ppml.deploy.profiles import TeeSettings
from ppml.errors import UsageError

__all__ = ["DeploymentSettings", "SPARK_SA", "BROKER_SA", "AUTH_SECRET", "AUTH_DIR", "SECRETS_DIR", "BROKER_PORT",
           "DATA_KEYS_DIR", "BROKER_CA_DIR"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_VAULT = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_IMAGE = re.compile(r"^[a-z0-9.\-]+(:\d+)?/[a-z0-9._/\-]+(:[A-Za-z0-9._\-]{1,128})?(@sha256:[0-9a-f]{64})?$")

SPARK_SA = "ppml-spark"
BROKER_SA = "ppml-broker"
AUTH_SECRET = "ppml-spark-auth"
#: Where pods mount the Spark authentication secret, Key Vault secrets, data-key files and the broker's CA.
AUTH_DIR = "/etc/ppml/spark-auth"
SECRETS_DIR = "/mnt/secrets-store"
DATA_KEYS_DIR = "/etc/ppml/data-keys"
BROKER_CA_DIR = "/etc/ppml/broker-ca"
BROKER_PORT = 8443


@dataclass(frozen=True)
class DeploymentSettings:
    """Everything ``ppml deploy render`` needs; :meth:`check` refuses what cannot work, naming the option.

    Parameters
    ----------
    namespace
        The Kubernetes namespace (created by the rendering).
    image
        The ppml image (``REGISTRY/REPOSITORY:TAG`` or ``...@sha256:DIGEST``) of driver, executor and broker pods.
    tee
        The TEE profile and what it needs.
    vault, tenant_id
        The Azure Key Vault (name) holding primary keys and secrets, and its Microsoft Entra tenant.
    client_id
        Client id of the user-assigned managed identity of the Spark pods (workload identity).
    secrets
        Key Vault secrets mounted into Spark pods under ``/mnt/secrets-store`` (e.g. ``keystore-pass``).
    broker, broker_client_id, broker_key, broker_replicas
        Whether to deploy the key broker, its own identity, the Key Vault key whose data keys it releases
        and its replica count.
    data_keys
        Data-key files (wrapped keys only) shipped to pods in a ConfigMap under ``/etc/ppml/data-keys``.
    egress_cidrs
        Private address ranges (private endpoints of storage or Key Vault) that pods may reach on 443.
    submitters
        Users or groups (``user:NAME`` / ``group:NAME``) allowed to submit jobs into the namespace.
    """

    namespace: str
    image: str
    tee: TeeSettings = field(default_factory=TeeSettings)
    vault: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    secrets: tuple[str, ...] = ()
    broker: bool = True
    broker_client_id: str | None = None
    broker_key: str = "ppml"
    broker_replicas: int = 2
    data_keys: tuple[str, ...] = ()
    egress_cidrs: tuple[str, ...] = ()
    submitters: tuple[str, ...] = ()

    def check(self) -> None:
        if not _DNS_LABEL.match(self.namespace):
            raise UsageError(f"--namespace {self.namespace!r} is not a Kubernetes namespace name",
                             hint="lower-case letters, digits and '-', at most 63 characters")
        if not _IMAGE.match(self.image):
            raise UsageError(f"--image {self.image!r} is not REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:…")
        tag = self.image.rsplit("/", 1)[-1]
        if "@sha256:" not in self.image and (":" not in tag or tag.endswith(":latest")):
            raise UsageError(f"--image {self.image!r} is not pinned",
                             hint="name a version tag or, better, a digest (…@sha256:…): what runs must be what "
                                  "the broker's policy measured")
        if self.vault is not None and not _VAULT.match(self.vault):
            raise UsageError(f"--vault {self.vault!r} is not a Key Vault name (3-24 letters, digits and '-')")
        for option, value in (("--tenant-id", self.tenant_id), ("--client-id", self.client_id),
                              ("--broker-client-id", self.broker_client_id)):
            if value is not None and not _GUID.match(value):
                raise UsageError(f"{option} {value!r} is not a GUID")
        if (self.secrets or self.broker) and not (self.vault and self.tenant_id):
            raise UsageError("Key Vault secrets and the broker need --vault NAME and --tenant-id GUID",
                             hint="az keyvault show -n NAME --query properties.tenantId -o tsv")
        if self.secrets and not self.client_id:
            raise UsageError("--secret needs --client-id: the Spark pods' managed identity reads them from Key Vault")
        if self.broker and not self.broker_client_id:
            raise UsageError("the broker needs --broker-client-id: its own managed identity, the only one allowed "
                             "to unwrap data keys in Key Vault (or pass --no-broker)")
        for name in self.secrets:
            if not re.match(r"^[A-Za-z0-9-]{1,127}$", name):
                raise UsageError(f"--secret {name!r} is not a Key Vault secret name")
        for who in self.submitters:
            kind, _, name = who.partition(":")
            if kind not in ("user", "group") or not name:
                raise UsageError(f"--submitter {who!r}: give user:NAME or group:NAME")
        if not 1 <= self.broker_replicas <= 10:
            raise UsageError("--broker-replicas must be between 1 and 10")
        self.tee.check(broker=self.broker)
