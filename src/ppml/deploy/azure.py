"""The Azure set-up, as ``az`` command lines for the user's own names (printed, never run by ppml).

What BigDL PPML's ``create-aks.sh`` and Key Vault scripts did, with its weak points replaced: a user-assigned
identity per workload federated with its Kubernetes service account (no service principal secret, no
``--client-secret`` on a command line), Key Vault in Azure RBAC mode with purge protection and the least
roles each identity needs, scoped to single keys, secrets and containers (BigDL granted ``all``), a storage
account with hierarchical namespace reached with identities (shared-key access off: no account key on any
command line), and TEE node pools tainted so that only ppml's pods land on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ppml.deploy.broker import TLS_SECRETS
from ppml.deploy.profiles import PROFILES, TAINT_KEY
from ppml.deploy.settings import BROKER_SA, SPARK_SA
from ppml.errors import UsageError

__all__ = ["AzureSetup", "azure_steps", "DEFAULT_VM_SIZES"]

#: A VM size per TEE profile: SGX (DCsv3), SEV-SNP confidential VM (DCasv5), confidential containers (DCas_cc_v5).
DEFAULT_VM_SIZES = {"none": "Standard_D4ds_v5", "sgx": "Standard_DC4s_v3", "cvm": "Standard_DC4as_v5",
                    "coco": "Standard_DC4as_cc_v5"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


@dataclass(frozen=True)
class AzureSetup:
    """The names to create. ``key`` is the Key Vault key that wraps data keys; ``secrets`` the Key Vault secrets
    Spark pods read (e.g. ``keystore-pass``)."""

    resource_group: str
    location: str
    cluster: str
    vault: str
    storage_account: str
    namespace: str = "ppml"
    tee: str = "sgx"
    node_pool: str = "teepool"
    vm_size: str | None = None
    node_count: int = 3
    container: str = "data"
    key: str = "ppml"
    secrets: tuple[str, ...] = ()
    broker: bool = True

    def check(self) -> None:
        for option, value in (("--resource-group", self.resource_group), ("--location", self.location),
                              ("--cluster", self.cluster), ("--node-pool", self.node_pool), ("--key", self.key),
                              ("--container", self.container), *(("--secret", s) for s in self.secrets)):
            if not _NAME.match(value):
                raise UsageError(f"{option} {value!r} is not a valid Azure name")
        if not re.match(r"^[a-z0-9]{3,24}$", self.storage_account):
            raise UsageError(f"--storage-account {self.storage_account!r}: 3-24 lower-case letters and digits")
        if not re.match(r"^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$", self.vault):
            raise UsageError(f"--vault {self.vault!r} is not a Key Vault name (3-24 letters, digits and '-')")
        if self.tee not in PROFILES:
            raise UsageError(f"--tee {self.tee!r} is not a TEE profile", hint="choose " + ", ".join(PROFILES))
        if not re.match(r"^[a-z][a-z0-9]{0,11}$", self.node_pool):
            raise UsageError(f"--node-pool {self.node_pool!r}: AKS pool names are 1-12 lower-case letters and digits")


def _role(title: str, principal: str, role: str, scope: str) -> str:
    return (f'az role assignment create --assignee-object-id "{principal}" --assignee-principal-type '
            f'ServicePrincipal --role "{role}" --scope "{scope}"  # {title}')


def azure_steps(setup: AzureSetup) -> list[tuple[str, list[str]]]:
    """``[(title, [command, ...]), ...]`` in the order to run them."""
    setup.check()
    s = setup
    rg, vm_size = s.resource_group, s.vm_size or DEFAULT_VM_SIZES[s.tee]
    addons = "azure-keyvault-secrets-provider" + (",confcom" if s.tee == "sgx" else "")
    steps: list[tuple[str, list[str]]] = [
        ("Resource group", [f"az group create --name {rg} --location {s.location}"]),
        ("Key Vault: Azure RBAC authorization, purge protection (keys cannot be destroyed by a deleted vault)", [
            f"az keyvault create --name {s.vault} --resource-group {rg} --location {s.location} --sku premium "
            "--enable-rbac-authorization true --enable-purge-protection true --retention-days 90",
            f'VAULT_ID=$(az keyvault show --name {s.vault} --query id -o tsv)',
            'ME=$(az ad signed-in-user show --query id -o tsv)',
            'az role assignment create --assignee-object-id "$ME" --role "Key Vault Crypto Officer" '
            '--scope "$VAULT_ID"  # you create and rotate the primary key',
            'az role assignment create --assignee-object-id "$ME" --role "Key Vault Secrets Officer" '
            '--scope "$VAULT_ID"  # you store the secrets below'],),
        ("Storage account with hierarchical namespace (ADLS Gen2); no shared keys: identities only", [
            f"az storage account create --name {s.storage_account} --resource-group {rg} --location {s.location} "
            "--sku Standard_ZRS --kind StorageV2 --enable-hierarchical-namespace true --min-tls-version TLS1_2 "
            "--https-only true --allow-blob-public-access false --allow-shared-key-access false",
            f'STORAGE_ID=$(az storage account show --name {s.storage_account} --resource-group {rg} --query id -o tsv)',
            'az role assignment create --assignee-object-id "$ME" --role "Storage Blob Data Contributor" '
            '--scope "$STORAGE_ID"  # you upload encrypted data',
            f"az storage container create --account-name {s.storage_account} --name {s.container} --auth-mode login"]),
        ("AKS: OIDC issuer and workload identity, the Key Vault secrets provider, Cilium network policies", [
            f"az aks create --resource-group {rg} --name {s.cluster} --location {s.location} --node-count 2 "
            "--enable-oidc-issuer --enable-workload-identity --enable-managed-identity "
            f"--enable-addons {addons} --network-plugin azure --network-dataplane cilium --generate-ssh-keys"
            + (" && az aks addon update --resource-group {rg} --name {cluster} --addon confcom "
               "--enable-sgxquotehelper".format(rg=rg, cluster=s.cluster) if s.tee == "sgx" else ""),
            *_node_pool(s, vm_size),
            f"az aks get-credentials --resource-group {rg} --name {s.cluster}",
            f'ISSUER=$(az aks show --resource-group {rg} --name {s.cluster} --query oidcIssuerProfile.issuerUrl -o tsv)']),
    ]
    identities = [("ppml-spark", SPARK_SA, "SPARK")] + ([("ppml-broker", BROKER_SA, "BROKER")] if s.broker else [])
    commands = []
    for identity, account, var in identities:
        commands += [
            f"az identity create --resource-group {rg} --name {identity} --location {s.location}",
            f'{var}_CLIENT_ID=$(az identity show --resource-group {rg} --name {identity} --query clientId -o tsv)',
            f'{var}_PRINCIPAL_ID=$(az identity show --resource-group {rg} --name {identity} --query principalId -o tsv)',
            f'az identity federated-credential create --name {identity} --identity-name {identity} '
            f'--resource-group {rg} --issuer "$ISSUER" --subject system:serviceaccount:{s.namespace}:{account} '
            "--audience api://AzureADTokenExchange"]
    steps.append(("One user-assigned identity per workload, federated with its service account (workload identity)",
                  commands))
    unwrapper = "BROKER" if s.broker else "SPARK"
    roles = [
        _role("the only identity that unwraps data keys" + (": the broker" if s.broker else ""),
              f"${unwrapper}_PRINCIPAL_ID", "Key Vault Crypto User", f"$VAULT_ID/keys/{s.key}"),
        _role("Spark reads and writes encrypted data", "$SPARK_PRINCIPAL_ID", "Storage Blob Data Contributor",
              f"$STORAGE_ID/blobServices/default/containers/{s.container}"),
        *(_role(f"Spark pods mount the secret {name}", "$SPARK_PRINCIPAL_ID", "Key Vault Secrets User",
                f"$VAULT_ID/secrets/{name}") for name in s.secrets),
        *(_role(f"the broker mounts {name}", "$BROKER_PRINCIPAL_ID", "Key Vault Secrets User",
                f"$VAULT_ID/secrets/{name}") for name in (TLS_SECRETS if s.broker else ())),
    ]
    steps.append(("The least roles: Key Vault Crypto User, Key Vault Secrets User, Storage Blob Data Contributor",
                  roles))
    keys = [f"ppml keys init --kms azure --vault {s.vault} --key-name {s.key}",
            f"ppml keys data-key --kms azure --vault {s.vault} --key-name {s.key} --out dk.json",
            *(f"ppml azure secret generate {name} --vault {s.vault}" for name in s.secrets)]
    steps.append(("The primary key (RSA-3072 in Key Vault), a data key (wrapped only), generated secrets", keys))
    render = (f"ppml deploy render --out deploy --namespace {s.namespace} --tee {s.tee} --node-pool {s.node_pool} "
              f"--image REGISTRY/ppml:VERSION --vault {s.vault} --tenant-id \"$(az account show --query tenantId "
              f"-o tsv)\" --client-id \"$SPARK_CLIENT_ID\" --data-key dk.json"
              + "".join(f" --secret {name}" for name in s.secrets)
              + (f" --broker-client-id \"$BROKER_CLIENT_ID\" --broker-key {s.key}" if s.broker else " --no-broker"))
    deploy = [render]
    if s.broker:
        deploy += [f"az keyvault secret set --vault-name {s.vault} --name {TLS_SECRETS[0]} "
                   "--file deploy/broker-tls/broker.pem",
                   f"az keyvault secret set --vault-name {s.vault} --name {TLS_SECRETS[1]} "
                   "--file deploy/broker-tls/broker-key.pem && shred -u deploy/broker-tls/broker-key.pem"]
    deploy.append("kubectl apply -f deploy/cluster/")
    steps.append(("The namespace, its objects and the broker (see 'ppml deploy render --help' for the TEE options)",
                  deploy))
    return steps


def _node_pool(s: AzureSetup, vm_size: str) -> list[str]:
    base = (f"az aks nodepool add --resource-group {s.resource_group} --cluster-name {s.cluster} --name {s.node_pool} "
            f"--mode User --node-count {s.node_count} --node-vm-size {vm_size}")
    if s.tee == "none":
        return [base]
    taint = f" --node-taints {TAINT_KEY}={s.tee}:NoSchedule"
    if s.tee == "coco":
        return [base + " --os-sku AzureLinux --workload-runtime KataCcIsolation" + taint,
                f"az aks update --resource-group {s.resource_group} --name {s.cluster}  # turns on the kata-cc runtime"]
    return [base + taint]
