"""``bigdl-ppml-submit.sh`` flags and ``spark.bigdl.kms.*`` settings, mapped to ppml's equivalents.

Each mapping says what the BigDL setting became, so a user moving a job over sees every change. Settings
that carry a secret (a plaintext primary key, a KMS API key, a storage account key, Spark's password) are
refused: on a command line they are visible to every user of the machine (``ps``) and land in shell history.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ppml.errors import UsageError
from ppml.keys.settings import KeySettings

__all__ = ["SgxFlags", "map_sgx_flags", "map_bigdl_conf", "refuse_secret_conf", "memory_bytes", "quantity"]

_MEMORY = re.compile(r"^(\d+)([kmgt]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# Settings whose key says "secret" but whose value names a file, a Kubernetes Secret or a switch, not a secret.
_NOT_SECRET = re.compile(r"(file|path|\.secrets\.[^.]+|secretkeyref\.[^.]+|secretname|\.enabled|"
                         r"enablesaslencryption|redaction\.regex|redaction\.options\.regex|bitlength)$", re.IGNORECASE)
_SECRET_WORDS = re.compile(r"secret|password|passwd|token|apikey|api\.key|account\.key|accountkey|sas|credential|"
                           r"plaintext|privatekey|private\.key", re.IGNORECASE)
_SOURCE = re.compile(r"^(env|file|azure-secret):.+")


def memory_bytes(text: str, *, flag: str) -> int:
    """Bytes of a Spark/JVM memory string (``512m``, ``32g``); a bad value is a UsageError naming ``flag``."""
    match = _MEMORY.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"{flag} {text!r} is not a memory size", hint="e.g. 512m, 8g, 32g")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def quantity(size: int) -> str:
    """A Kubernetes quantity for ``size`` bytes, in the largest binary unit that divides it."""
    for unit, suffix in ((1 << 40, "Ti"), (1 << 30, "Gi"), (1 << 20, "Mi"), (1 << 10, "Ki")):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


@dataclass(frozen=True)
class SgxFlags:
    """The SGX flags of ``bigdl-ppml-submit.sh``, as given (``None``: not given)."""

    enabled: str | None = None
    log_level: str | None = None
    driver_memory: str | None = None
    driver_jvm_memory: str | None = None
    executor_memory: str | None = None
    executor_jvm_memory: str | None = None

    def given(self) -> list[str]:
        return [f"--sgx-{name.replace('_', '-')}" for name, value in vars(self).items()
                if value is not None and name != "enabled"]


def map_sgx_flags(flags: SgxFlags, *, master_kind: str, profile: str | None, driver_memory: str | None,
                  executor_memory: str | None) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """``(spark conf, {role: EPC quantity}, notes)`` for BigDL's SGX flags.

    BigDL's three memories map as: ``--sgx-*-memory`` (enclave size) → the pod's ``sgx.intel.com/epc``
    request; ``--sgx-*-jvm-memory`` (heap inside the enclave) → ``spark.*.memory``; and ``--driver-memory``
    / ``--executor-memory`` (the container) → the heap plus ``spark.*.memoryOverhead``.
    """
    if flags.enabled is None and not flags.given():
        return {}, {}, []
    enabled = (flags.enabled or "false").strip().lower()
    if enabled not in ("true", "false"):
        raise UsageError(f"--sgx-enabled {flags.enabled!r}: give true or false")
    if enabled == "false":
        if flags.given():
            raise UsageError(f"{', '.join(flags.given())} contradict(s) --sgx-enabled false",
                             hint="drop them, or run in SGX with --sgx-enabled true")
        return {}, {}, ["--sgx-enabled false: no TEE (as BigDL)"]
    if master_kind != "k8s":
        raise UsageError("--sgx-enabled true needs a k8s:// master: ppml runs SGX enclaves only in pods on an SGX "
                         "node pool", hint="render one with: ppml deploy render --tee sgx ...")
    if profile not in (None, "sgx"):
        raise UsageError(f"--sgx-enabled true contradicts the deployment's TEE profile {profile!r}",
                         hint="submit to a deployment rendered with --tee sgx")
    conf: dict[str, str] = {}
    epc: dict[str, str] = {}
    notes = ["--sgx-enabled true → the deployment's sgx profile (Gramine enclave on the SGX node pool)"]
    for role, container, heap, enclave in (("driver", driver_memory, flags.driver_jvm_memory, flags.driver_memory),
                                           ("executor", executor_memory, flags.executor_jvm_memory,
                                            flags.executor_memory)):
        heap_bytes = memory_bytes(heap, flag=f"--sgx-{role}-jvm-memory") if heap else None
        if heap:
            conf[f"spark.{role}.memory"] = heap
            notes.append(f"--sgx-{role}-jvm-memory {heap} → spark.{role}.memory={heap} (the JVM heap in the enclave)")
        if enclave:
            size = memory_bytes(enclave, flag=f"--sgx-{role}-memory")
            if heap_bytes and size < heap_bytes:
                raise UsageError(f"--sgx-{role}-memory {enclave} is smaller than --sgx-{role}-jvm-memory {heap}: "
                                 "the heap lives inside the enclave")
            epc[role] = quantity(size)
            notes.append(f"--sgx-{role}-memory {enclave} → {role} pods request sgx.intel.com/epc: {epc[role]}")
        if container and heap_bytes:
            overhead = memory_bytes(container, flag=f"--{role}-memory") - heap_bytes
            if overhead <= 0:
                raise UsageError(f"--{role}-memory {container} must exceed --sgx-{role}-jvm-memory {heap}: BigDL's "
                                 f"--{role}-memory is the whole container, the JVM heap is part of it")
            conf[f"spark.{role}.memoryOverhead"] = f"{overhead >> 20}m"
            notes.append(f"--{role}-memory {container} → spark.{role}.memoryOverhead={overhead >> 20}m (container "
                         "memory beyond the heap)")
    if flags.log_level is not None:
        level = flags.log_level.strip().lower()
        if level not in ("error", "warning", "none"):
            raise UsageError(f"--sgx-log-level {flags.log_level}: Gramine's log level is part of the measured "
                             "enclave, and levels above 'warning' need a debug enclave, which the broker refuses",
                             hint="build a separate development image with loader.log_level = \"debug\" and "
                                  "sgx.debug = true, and never give it keys")
        notes.append(f"--sgx-log-level {flags.log_level} → kept in the signed Gramine manifest (loader.log_level), "
                     "which the enclave measurement covers; not a run-time setting")
    return conf, epc, notes


def refuse_secret_conf(key: str, value: str) -> None:
    """Refuse a ``--conf`` whose value is a secret (the command line is visible to every local user)."""
    if _NOT_SECRET.search(key) or not _SECRET_WORDS.search(key) or _SOURCE.match(value):
        return
    if key == "spark.authenticate.secret":
        hint = "spark:// masters: --auth-secret-file FILE (mode 0600); k8s:// masters use the deployment's Secret"
    elif key.startswith("spark.hadoop.fs.azure"):
        hint = ("ppml reads storage with each pod's own identity (workload identity) or a credential source: "
                "AzureStorageSettings(account_key='file:/mnt/secrets-store/storage-key')")
    elif key.startswith("spark.bigdl."):
        hint = "name the key by source instead: --bigdl-key env:VAR or file:PATH"
    else:
        hint = "put it in a file (mode 0600) or Key Vault and give its source (file:PATH, azure-secret:VAULT/NAME)"
    raise UsageError(f"--conf {key}=… puts a secret on the command line", hint=hint)


def map_bigdl_conf(conf: dict[str, str], keys: KeySettings, *,
                   insecure_simple: bool) -> tuple[dict[str, str], KeySettings, list[str]]:
    """Move ``spark.bigdl.kms.*`` / ``spark.bigdl.primaryKey.*`` settings into ``keys``.

    Returns the remaining Spark settings, the key settings and what each BigDL setting became. Key types
    ppml does not implement (EHSM, BigDL's KMS server) are refused by name.
    """
    rest: dict[str, str] = {}
    found: dict[str, str] = {}
    notes: list[str] = []
    for key, value in conf.items():
        legacy = key.startswith("spark.bigdl.kms.")
        current = re.match(r"^spark\.bigdl\.primaryKey\.[^.]+\.(.+)$", key)
        if not legacy and not current:
            if key.startswith("spark.bigdl."):
                raise UsageError(f"--conf {key} is not a BigDL setting ppml knows",
                                 hint="ppml maps spark.bigdl.kms.* and spark.bigdl.primaryKey.<name>.*")
            rest[key] = value
            continue
        field = key[len("spark.bigdl.kms."):] if legacy else current.group(1)
        refuse_secret_conf(key, value)
        mapped = {"type": "type", "kms.type": "type", "azure.vault": "vault", "kms.vault": "vault",
                  "azure.clientId": "client_id", "kms.clientId": "client_id", "key.primary": "primary",
                  "material": "primary", "key.data": "data"}.get(field)
        if mapped is None:
            raise UsageError(f"--conf {key}: {field} belongs to a KMS ppml does not run (EHSM or BigDL's KMS server)",
                             hint="ppml's KMSs: Azure Key Vault (--kms azure), PKCS#11 HSMs, its local key store and "
                                  "the attested key broker")
        if mapped in found and found[mapped] != value:
            raise UsageError(f"--conf {key}={value} contradicts another BigDL setting ({found[mapped]})")
        found[mapped] = value
    if not found:
        return rest, keys, notes
    kms_type = found.get("type")
    changes: dict[str, object] = {}
    if kms_type is not None:
        canonical = {"azurekeymanagementservice": "AzureKeyManagementService",
                     "simplekeymanagementservice": "SimpleKeyManagementService"}.get(kms_type.lower())
        if canonical is None:
            raise UsageError(f"spark.bigdl.kms.type={kms_type} is not a key type ppml runs",
                             hint="AzureKeyManagementService and SimpleKeyManagementService (reading old data) are")
        if canonical == "SimpleKeyManagementService" and not insecure_simple:
            raise UsageError("spark.bigdl.kms.type=SimpleKeyManagementService gives NO confidentiality",
                             hint="to read old BigDL data once, add --insecure-simple-kms; then re-encrypt it")
        if "primary" in found or canonical == "SimpleKeyManagementService":
            if "primary" not in found:
                raise UsageError("SimpleKeyManagementService needs spark.bigdl.kms.key.primary (the primary-key file)")
            changes.update(bigdl_kms=canonical, bigdl_primary_key=found["primary"],
                           insecure_allow_simple_kms=canonical == "SimpleKeyManagementService")
            notes.append(f"spark.bigdl.kms.type={kms_type} with key.primary={found['primary']} → --bigdl-kms "
                         f"{canonical} --bigdl-key {found['primary']} (BigDL's own data keys and files)")
        else:
            changes["kms"] = "azure"
            notes.append(f"spark.bigdl.kms.type={kms_type} → --kms azure (Key Vault holds the primary key)")
    elif "primary" in found:
        raise UsageError("spark.bigdl.kms.key.primary needs spark.bigdl.kms.type (which KMS the file belongs to)")
    if "vault" in found:
        changes["azure_vault"] = found["vault"]
        notes.append(f"Key Vault {found['vault']} → --vault {found['vault']} (option azureVault)")
    if "client_id" in found:
        changes["azure_client_id"] = found["client_id"]
        notes.append(f"client id {found['client_id']} → --client-id (option azureClientId)")
    if "data" in found:
        notes.append(f"spark.bigdl.kms.key.data={found['data']} → give the data-key file to the application "
                     f"(e.g. ppml tpch run ... --data-key {found['data']}); ppml files name their key in every header")
    for name, value in changes.items():
        given = getattr(keys, name)
        if given not in (None, False, "local", value):
            raise UsageError(f"the BigDL settings give {name}={value}, but the key options give {given}")
    return rest, keys.replace(**changes), notes
