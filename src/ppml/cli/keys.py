"""``ppml keys``: primary keys and data keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ppml.cli._common import (
    BigdlKmsOpt,
    ClientIdOpt,
    ForceOpt,
    InsecureSimpleOpt,
    JsonOpt,
    KeyNameOpt,
    KmsOpt,
    KeystoreOpt,
    PassFileOpt,
    PrimaryKeyFileOpt,
    PrimaryKeyPlaintextOpt,
    VaultOpt,
    azure_kms,
    bigdl_backends,
    emit_json,
    err,
    is_azure,
    local_kms,
    pkcs11_kms,
    primary_kms,
)
from ppml.errors import ConfigError, UsageError
from ppml.io import rotation
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.kms import PrimaryKeyInfo
from ppml.keys.local import DEFAULT_KEY_NAME

app = typer.Typer(help="Create, rotate and inspect keys.", no_args_is_help=True, rich_markup_mode="markdown")
HsmOpt = Annotated[bool, typer.Option("--hsm", help="--kms azure: create an RSA-HSM key (Premium vaults).")]


def _show_key(info: PrimaryKeyInfo) -> None:
    versions = ", ".join(f"v{v.version} ({v.state})" for v in info.versions)
    name = info.details.get("key_id", info.name) if info.kms == "azure" else info.name
    err.print(f"[bold]{info.kms}:{name}[/]  current version v{info.current_version}  versions: {versions}")


@app.command()
def init(
    key_name: KeyNameOpt = DEFAULT_KEY_NAME,
    keystore: KeystoreOpt = None,
    passphrase_file: PassFileOpt = None,
    kms_name: KmsOpt = None,
    vault: VaultOpt = None,
    client_id: ClientIdOpt = None,
    hsm: HsmOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create the key store (if missing) and a primary key in it, or a primary key in Azure Key Vault.

    The passphrase comes from --passphrase-file, $PPML_KEYSTORE_PASSWORD, or a prompt. With --kms azure
    the key is an RSA-3072 Key Vault key (RSA-HSM with --hsm; AES-256 oct-HSM on a Managed HSM), created with
    your Azure identity (DefaultAzureCredential: az login, managed or workload identity).

    **Examples**

    * `ppml keys init`: key store in ~/.config/ppml, primary key "default"
    * `PPML_KEYSTORE=./ks.json ppml keys init --key-name tpch`
    * `ppml keys init --kms azure --vault kv1 --key-name tpch`
    * `PPML_PKCS11_TOKEN=ppml PPML_PKCS11_PIN=... ppml keys init --kms pkcs11 --key-name tpch`: a
      non-extractable AES-256 key in an HSM token
    """
    if kms_name is not None and kms_name.lower() == "pkcs11" and not vault and not hsm:
        info = pkcs11_kms().create_key(key_name)
        if as_json:
            emit_json("keys.init", {"kms": "pkcs11", "key": info.to_json()})
            return
        err.print(f"Created HSM key [bold]pkcs11:{info.name}[/] version v{info.current_version} (AES-256, "
                  "not extractable).")
        err.print(f"Next: ppml keys data-key --kms pkcs11 --key-name {key_name} --out data-key.json")
        return
    if is_azure(kms_name):
        info = azure_kms(vault, client_id, hsm=hsm).create_key(key_name)
        if as_json:
            emit_json("keys.init", {"kms": "azure", "key": info.to_json()})
            return
        details = info.details
        size = f" {details['key_size']}" if "key_size" in details else ""
        err.print(f"Created Key Vault key [bold]{details['key_id']}[/] ({details['kty']}{size}) "
                  f"version v{info.current_version}.")
        err.print(f"Next: ppml keys data-key --kms azure --vault {vault or '$PPML_AZURE_VAULT'} --key-name {key_name} "
                  "--out data-key.json")
        return
    kms = primary_kms(kms_name, vault, client_id, keystore, passphrase_file, confirm=True, hsm=hsm)
    created_store = not kms.exists
    if created_store:
        kms.create_store()
    info = kms.create_key(key_name)
    if as_json:
        emit_json("keys.init", {"keystore": str(kms.path), "created_keystore": created_store, "key": info.to_json()})
        return
    if created_store:
        err.print(f"Created key store {kms.path} (mode 0600).")
    err.print(f"Created primary key [bold]local:{key_name}[/] version v{info.current_version}.")
    named = "" if key_name == DEFAULT_KEY_NAME else f" --key-name {key_name}"
    err.print(f"Next: ppml keys data-key{named} --out data-key.json")


@app.command("data-key")
def data_key(
    out: Annotated[Path, typer.Option("--out", "-o", help="Data-key file to create (mode 0600).")],
    key_name: KeyNameOpt = DEFAULT_KEY_NAME,
    keystore: KeystoreOpt = None,
    passphrase_file: PassFileOpt = None,
    primary_key_plaintext: PrimaryKeyPlaintextOpt = None,
    kms: BigdlKmsOpt = None,
    primary_key_file: PrimaryKeyFileOpt = None,
    insecure_allow_simple_kms: InsecureSimpleOpt = False,
    vault: VaultOpt = None,
    client_id: ClientIdOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a new data key, wrapped by a primary key, in a data-key file.

    The file holds only the wrapped key; the plaintext key never touches disk. With BigDL options the
    key is a BigDL data key, for writing files BigDL can read (aes/cbc/pkcs5padding).

    **Examples**

    * `ppml keys data-key --out dk.json`
    * `ppml keys data-key --out dk.json --kms azure --vault kv1 --key-name tpch`
    * `ppml keys data-key --out bigdl-dk.json --primary-key-plaintext env:BIGDL_PRIMARY_KEY`
    * `ppml keys data-key --out bigdl-dk.json --kms AzureKeyManagementService --primary-key-file keys/primaryKey`
    """
    if is_azure(kms) and primary_key_file is None:
        if primary_key_plaintext:
            raise UsageError("name one key source: --kms azure or --primary-key-plaintext")
        backend = azure_kms(vault, client_id)
    elif kms is not None and kms.lower() == "pkcs11":
        if primary_key_plaintext or primary_key_file or vault:
            raise UsageError("--kms pkcs11 takes no BigDL options and no --vault")
        backend = pkcs11_kms()
    else:
        if vault:
            raise UsageError("--vault is for --kms azure")
        bigdl = bigdl_backends(primary_key_plaintext, kms, primary_key_file, insecure_allow_simple_kms)
        if len(bigdl) > 1:
            raise UsageError("name one BigDL key source: --primary-key-plaintext or --kms with --primary-key-file")
        backend = bigdl[0] if bigdl else local_kms(keystore, passphrase_file)
    key, wrapped = backend.generate_data_key(key_name)
    record = DataKeyFile.new(key.key_id, (wrapped,))
    record.save(out, replace=force)
    if as_json:
        emit_json("keys.data-key", {"path": str(out), **record.to_json()})
        return
    err.print(f"Wrote data key {key.key_id} to {out} (mode 0600), wrapped by {wrapped.reference}.")


@app.command()
def rotate(
    key_name: KeyNameOpt = DEFAULT_KEY_NAME,
    keystore: KeystoreOpt = None,
    passphrase_file: PassFileOpt = None,
    kms_name: KmsOpt = None,
    vault: VaultOpt = None,
    client_id: ClientIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a new version of a primary key; new data keys are wrapped by it.

    Existing files stay readable (their headers name the version that wrapped them). Move them to the new
    version with `ppml rewrap PATH`. With --kms azure this adds a Key Vault key version (permission 'rotate').

    **Examples**

    * `ppml keys rotate && ppml rewrap ./encrypted`
    * `ppml keys rotate --kms azure --vault kv1 --key-name tpch`
    """
    info = primary_kms(kms_name, vault, client_id, keystore, passphrase_file).rotate_key(key_name)
    if as_json:
        emit_json("keys.rotate", {"key": info.to_json()})
        return
    _show_key(info)
    err.print("Next: ppml rewrap PATH  (re-wraps data keys in headers and data-key files; no re-encryption)")


@app.command("list")
def list_keys(
    keystore: KeystoreOpt = None,
    kms_name: KmsOpt = None,
    vault: VaultOpt = None,
    client_id: ClientIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the primary keys and their versions (no passphrase needed).

    **Examples**

    * `ppml keys list --json`
    * `ppml keys list --kms azure --vault kv1`
    """
    if is_azure(kms_name):
        backend = azure_kms(vault, client_id)
        infos = backend.list_keys()
        if as_json:
            emit_json("keys.list", {"vault": backend.vault_url, "keys": [i.to_json() for i in infos]})
            return
        err.print(f"Key Vault {backend.vault_url}:")
        for info in infos:
            _show_key(info)
        return
    kms = primary_kms(kms_name, vault, client_id, keystore, None)
    infos = kms.list_keys()
    where = {"keystore": str(kms.path)} if hasattr(kms, "path") else {"token": str(getattr(kms, "token", ""))}
    if as_json:
        emit_json("keys.list", {**where, "keys": [i.to_json() for i in infos]})
        return
    err.print(f"Key store {kms.path}:" if "keystore" in where else f"PKCS#11 token {where['token']}:")
    for info in infos:
        _show_key(info)


@app.command()
def inspect(
    file: Annotated[Optional[Path], typer.Argument(
        help="A data-key file or a key store file.", exists=True, dir_okay=False)] = None,
    kms_name: KmsOpt = None,
    vault: VaultOpt = None,
    client_id: ClientIdOpt = None,
    key_name: KeyNameOpt = DEFAULT_KEY_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Show what a data-key file or key store holds, without unwrapping anything; or describe a Key Vault key.

    **Examples**

    * `ppml keys inspect dk.json --json`
    * `ppml keys inspect --kms azure --vault kv1 --key-name tpch`: its versions, type and size
    """
    if file is None:
        if not is_azure(kms_name):
            raise UsageError("inspect needs a FILE (data-key file or key store), or --kms azure --key-name NAME")
        info = azure_kms(vault, client_id).describe_key(key_name)
        if as_json:
            emit_json("keys.inspect", {"type": "azure-key", "key": info.to_json()})
            return
        details = info.details
        err.print(f"Key Vault key {details['key_id']}: {details['kty']}"
                  + (f" {details['key_size']}" if "key_size" in details else ""))
        _show_key(info)
        return
    if kms_name is not None or vault is not None:
        raise UsageError("--kms/--vault describe a Key Vault key; give either them or a FILE")
    doc = json.loads(file.read_text(encoding="utf-8"))
    if str(doc.get("schema", "")).startswith("ppml.keystore/"):
        infos = local_kms(file, None).list_keys()
        payload = {"type": "keystore", "path": str(file), "keys": [i.to_json() for i in infos]}
    else:
        record = DataKeyFile.load(file)
        payload = {
            "type": "data-key",
            "path": str(file),
            "key_id": record.key_id,
            "created": record.created,
            "wrapped_by": [{"reference": w.reference, "kms": w.kms, "key": w.key, "version": w.version,
                            "wrapped_bytes": len(w.wrapped)} for w in record.envelope],
        }
    if as_json:
        emit_json("keys.inspect", payload)
        return
    if payload["type"] == "keystore":
        err.print(f"Key store {file}")
        for info in infos:
            _show_key(info)
    else:
        err.print(f"Data-key file {file}: data key {record.key_id}, created {record.created}")
        for entry in payload["wrapped_by"]:
            err.print(f"  wrapped by {entry['reference']} ({entry['wrapped_bytes']} bytes)")


@app.command()
def retire(
    version: Annotated[str, typer.Argument(help="Version to retire, e.g. 1 or v1.")],
    scan: Annotated[list[Path], typer.Option("--scan", help="Data folders to check for files still using the "
                                                          "version (repeatable; required).")],
    confirm: Annotated[Optional[str], typer.Option("--confirm", help="Repeat the key name to confirm.")] = None,
    key_name: KeyNameOpt = DEFAULT_KEY_NAME,
    keystore: KeystoreOpt = None,
    passphrase_file: PassFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Destroy an old primary-key version, refused while any scanned file still uses it.

    **Example**: `ppml keys retire 1 --scan ./encrypted --scan ./keys --confirm default`
    """
    version = version.removeprefix("v")
    if confirm != key_name:
        raise UsageError(f"retiring a key version destroys it; confirm with --confirm {key_name}")
    reference = f"local:{key_name}#v{version}"
    usage = {}
    for folder in scan:
        for ref, count in rotation.key_usage(rotation.scan(str(folder))).items():
            usage[ref] = usage.get(ref, 0) + count
    if usage.get(reference):
        raise ConfigError(f"{usage[reference]} file(s) under the scanned folders still use {reference}",
                          hint=f"run 'ppml rewrap PATH --key-name {key_name}' on them first")
    info = local_kms(keystore, passphrase_file).retire_version(key_name, version)
    if as_json:
        emit_json("keys.retire", {"retired": reference, "key": info.to_json()})
        return
    err.print(f"Retired {reference}.")
    _show_key(info)

