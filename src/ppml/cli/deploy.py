"""``ppml deploy``: the Kubernetes objects of a namespace for a TEE profile, and the Azure set-up steps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.markup import escape

from ppml.cli._common import ForceOpt, JsonOpt, emit_json, err, out

app = typer.Typer(help="Deploy to Kubernetes/AKS: cluster objects, TEE node pools, Azure set-up.",
                  no_args_is_help=True, rich_markup_mode="markdown")

_TEE = "TEE profile"
_AZ = "Azure and identities"
_BROKER = "Key broker"
_NAMES = "Azure names"
_POOL = "Node pool"


def _many(flag: str, metavar: str, help_text: str, panel: str):
    return Annotated[Optional[list[str]], typer.Option(flag, metavar=metavar, rich_help_panel=panel, help=help_text)]


def _one(flag: str, metavar: str, help_text: str, panel: str):
    return Annotated[Optional[str], typer.Option(flag, metavar=metavar, rich_help_panel=panel, help=help_text)]


def _pcrs(values: list[str]) -> dict[int, str]:
    from ppml.errors import UsageError

    pcrs: dict[int, str] = {}
    for item in values:
        index, sep, digest = item.partition("=")
        if not sep or not index.isdigit() or not 0 <= int(index) <= 23 or len(digest) != 64:
            raise UsageError(f"--pcr {item!r} is not INDEX=HEX (a sha256 PCR value, index 0-23)")
        pcrs[int(index)] = digest.lower()
    return pcrs


@app.command()
def render(
    out_dir: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder to write (refused if it exists).")],
    image: Annotated[str, typer.Option("--image", metavar="IMAGE", help="ppml image, REGISTRY/ppml:TAG or "
                                                                       "REPO@sha256:DIGEST.")],
    namespace: Annotated[str, typer.Option("--namespace", metavar="NAME", help="Namespace to create.")] = "ppml",
    tee: Annotated[str, typer.Option("--tee", metavar="PROFILE", rich_help_panel=_TEE,
                                     help="none, sgx, cvm or coco.")] = "none",
    node_pool: _one("--node-pool", "NAME", "AKS node pool of the TEE nodes.", _TEE) = None,
    sgx_driver_epc: Annotated[str, typer.Option("--sgx-driver-epc", metavar="SIZE", rich_help_panel=_TEE,
                                                help="sgx: enclave memory of driver pods.")] = "8Gi",
    sgx_executor_epc: Annotated[str, typer.Option("--sgx-executor-epc", metavar="SIZE", rich_help_panel=_TEE,
                                                  help="sgx: enclave memory of executor pods.")] = "8Gi",
    sgx_plugin: Annotated[str, typer.Option("--sgx-plugin", metavar="NAME", rich_help_panel=_TEE,
                                            help="sgx: aks (confcom add-on) or intel device plugin.")] = "aks",
    mrenclave: _many("--mrenclave", "HEX", "sgx: accepted enclave measurement (repeatable).", _TEE) = None,
    mrsigner: _one("--mrsigner", "HEX", "sgx: accepted enclave signer (with --isv-prod-id).", _TEE) = None,
    isv_prod_id: Annotated[Optional[int], typer.Option("--isv-prod-id", metavar="N", rich_help_panel=_TEE,
                                                       help="sgx: product id signed into the enclave.")] = None,
    tpm_resource: _one("--tpm-resource", "NAME", "cvm: device-plugin resource for /dev/tpmrm0.", _TEE) = None,
    tpm_ca: _one("--tpm-ca", "FILE", "cvm: CA (PEM) of the vTPM attestation keys.", _TEE) = None,
    pcr: _many("--pcr", "INDEX=HEX", "cvm: sha256 PCR value to pin (repeatable).", _TEE) = None,
    cc_policy: Annotated[Optional[Path], typer.Option("--cc-policy", metavar="FILE", rich_help_panel=_TEE,
                                                      help="coco: Kata agent policy (base64).")] = None,
    maa_endpoint: _one("--maa-endpoint", "HOST", "coco: attestation provider host.", _TEE) = None,
    maa_jwks: _one("--maa-jwks", "FILE", "coco: the provider's signing keys (JWKS).", _TEE) = None,
    simulated: Annotated[bool, typer.Option("--simulated", rich_help_panel=_TEE,
                                            help="none: broker accepts simulated evidence (development).")] = False,
    vault: _one("--vault", "NAME", "Azure Key Vault with the primary key and secrets.", _AZ) = None,
    tenant_id: _one("--tenant-id", "GUID", "Microsoft Entra tenant of the vault.", _AZ) = None,
    client_id: _one("--client-id", "GUID", "Managed identity of the Spark pods.", _AZ) = None,
    secret: _many("--secret", "NAME", "Key Vault secret mounted into Spark pods (repeatable).", _AZ) = None,
    data_key: _many("--data-key", "FILE", "Data-key file shipped to pods (repeatable).", _AZ) = None,
    egress_cidr: _many("--egress-cidr", "CIDR", "Private endpoint range pods may reach on 443.", _AZ) = None,
    submitter: _many("--submitter", "user:NAME|group:NAME", "May submit jobs to the namespace.", _AZ) = None,
    broker: Annotated[bool, typer.Option("--broker/--no-broker", rich_help_panel=_BROKER,
                                         help="Deploy the key broker (keys only for attested pods).")] = True,
    broker_client_id: _one("--broker-client-id", "GUID", "Managed identity of the broker.", _BROKER) = None,
    broker_key: Annotated[str, typer.Option("--broker-key", metavar="NAME", rich_help_panel=_BROKER,
                                            help="Key Vault key whose data keys it releases.")] = "ppml",
    broker_replicas: Annotated[int, typer.Option("--broker-replicas", metavar="N", rich_help_panel=_BROKER,
                                                 help="Broker pods.")] = 2,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print every object (secrets redacted); write "
                                                            "nothing.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write everything a namespace needs for a TEE profile: namespace, RBAC, network policies, Spark's
    authentication Secret, Key Vault SecretProviderClasses, pod templates and the key broker.

    **Examples**

    * `ppml deploy render --out deploy --image myacr.azurecr.io/ppml:0.1.0 --no-broker --vault kv1
      --tenant-id $TENANT --client-id $SPARK_ID --secret keystore-pass`
    * `ppml deploy render --out deploy --tee sgx --node-pool sgxpool --image myacr.azurecr.io/ppml:0.1.0
      --vault kv1 --tenant-id $TENANT --client-id $SPARK_ID --broker-client-id $BROKER_ID --mrenclave $MRENCLAVE`
    * `ppml deploy render --out deploy --tee coco --node-pool ccpool --cc-policy policy.b64 --maa-endpoint
      myattest.weu.attest.azure.net --maa-jwks certs.json ...` (then: `kubectl apply -f deploy/cluster/`)
    """
    from ppml.deploy.profiles import TeeSettings
    from ppml.deploy.render import redacted, render as render_objects, write
    from ppml.deploy.settings import DeploymentSettings

    policy = cc_policy.read_text().strip() if cc_policy else None
    settings = DeploymentSettings(
        namespace=namespace, image=image,
        tee=TeeSettings(tee, node_pool=node_pool, epc_driver=sgx_driver_epc, epc_executor=sgx_executor_epc,
                        sgx_plugin=sgx_plugin, mrenclave=tuple(v.lower() for v in mrenclave or ()),
                        mrsigner=mrsigner.lower() if mrsigner else None, isv_prod_id=isv_prod_id,
                        tpm_resource=tpm_resource, tpm_ca=tpm_ca, pcrs=_pcrs(pcr or []), cc_policy=policy,
                        maa_endpoint=maa_endpoint, maa_jwks=maa_jwks, simulated=simulated),
        vault=vault, tenant_id=tenant_id, client_id=client_id, secrets=tuple(secret or ()), broker=broker,
        broker_client_id=broker_client_id, broker_key=broker_key, broker_replicas=broker_replicas,
        data_keys=tuple(data_key or ()), egress_cidrs=tuple(egress_cidr or ()), submitters=tuple(submitter or ()))
    rendering = render_objects(settings)
    if dry_run:
        objects = [redacted(obj) for obj in rendering.objects]
        if as_json:
            emit_json("deploy.render", {"objects": objects, "deployment": rendering.deployment})
        else:
            out.print(escape(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True)))
        return
    folder = write(rendering, out_dir, force=force)
    if as_json:
        emit_json("deploy.render", {"out": str(folder), "files": sorted(rendering.files),
                                    "objects": len(rendering.objects)})
        return
    err.print(f"Wrote {len(rendering.objects)} objects to {folder} (secrets in 0600 files).")
    err.print("Next:" + ("\n  store the broker's TLS files in Key Vault (ppml deploy azure prints the commands)"
                         if broker else "")
              + f"\n  kubectl apply -f {folder}/cluster/"
              + f"\n  ppml submit --master k8s://https://API-SERVER --deploy-mode cluster --deployment {folder} "
                "ppml tpch run ...")


@app.command()
def azure(
    resource_group: Annotated[str, typer.Option("--resource-group", "-g", metavar="NAME", rich_help_panel=_NAMES,
                                                help="Resource group.")],
    cluster: Annotated[str, typer.Option("--cluster", metavar="NAME", rich_help_panel=_NAMES,
                                         help="AKS cluster.")],
    vault: Annotated[str, typer.Option("--vault", metavar="NAME", rich_help_panel=_NAMES, help="Key Vault.")],
    storage_account: Annotated[str, typer.Option("--storage-account", metavar="NAME", rich_help_panel=_NAMES,
                                                 help="ADLS Gen2 account.")],
    location: Annotated[str, typer.Option("--location", "-l", metavar="REGION", rich_help_panel=_NAMES,
                                          help="Azure region.")] = "westeurope",
    container: Annotated[str, typer.Option("--container", metavar="NAME", rich_help_panel=_NAMES,
                                           help="Blob container.")] = "data",
    key: Annotated[str, typer.Option("--key", metavar="NAME", rich_help_panel=_NAMES,
                                     help="Key Vault key wrapping data keys.")] = "ppml",
    secret: _many("--secret", "NAME", "Key Vault secret Spark pods mount (repeatable).", _NAMES) = None,
    namespace: Annotated[str, typer.Option("--namespace", metavar="NAME", help="Kubernetes namespace.")] = "ppml",
    tee: Annotated[str, typer.Option("--tee", metavar="PROFILE", rich_help_panel=_POOL,
                                     help="none, sgx, cvm or coco.")] = "sgx",
    node_pool: Annotated[str, typer.Option("--node-pool", metavar="NAME", rich_help_panel=_POOL,
                                           help="TEE node pool.")] = "teepool",
    vm_size: Annotated[Optional[str], typer.Option("--vm-size", metavar="SIZE", rich_help_panel=_POOL,
                                                   help="[default: DC4s_v3, DC4as_v5 or DC4as_cc_v5]")] = None,
    node_count: Annotated[int, typer.Option("--node-count", min=1, max=100, rich_help_panel=_POOL,
                                            help="TEE nodes.")] = 3,
    broker: Annotated[bool, typer.Option("--broker/--no-broker", help="With the key broker.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Print the Azure set-up as az commands for your names: resource group, Key Vault (RBAC, purge
    protection), ADLS Gen2 storage, AKS with workload identity and a TEE node pool, identities and the least
    role assignments, then the keys and the deployment.

    **Examples**

    * `ppml deploy azure -g rg-ppml --cluster aks-ppml --vault kv-ppml --storage-account ppmlsa --tee sgx > setup.sh`
    * `ppml deploy azure -g rg-ppml --cluster aks-ppml --vault kv-ppml --storage-account ppmlsa --tee cvm
      --no-broker --secret keystore-pass`
    """
    from ppml.deploy.azure import AzureSetup, azure_steps

    steps = azure_steps(AzureSetup(resource_group, location, cluster, vault, storage_account, namespace, tee,
                                   node_pool, vm_size, node_count, container, key, tuple(secret or ()), broker))
    if as_json:
        emit_json("deploy.azure", {"steps": [{"title": title, "commands": commands} for title, commands in steps]})
        return
    out.print("#!/usr/bin/env bash\n# Azure set-up for ppml (ppml deploy azure). Review, then run step by step.\n"
              "set -euo pipefail")
    for title, commands in steps:
        out.print(escape(f"\n# {title}"))
        for command in commands:
            out.print(escape(command))
