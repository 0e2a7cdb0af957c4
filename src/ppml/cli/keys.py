"""``ppml keys``: primary keys and data keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ppml.cli._common import ForceOpt, JsonOpt, emit_json, err
from ppml.cli.options import KeyNameOpt, key_options, passphrase_prompt
from ppml.errors import ConfigError, UsageError
from ppml.io import rotation
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.kms import KeyManagementService, PrimaryKeyInfo
from ppml.keys.local import DEFAULT_KEY_NAME, LocalKms
from ppml.keys.settings import KeySettings

app = typer.Typer(help="Create, rotate and inspect keys.", no_args_is_help=True, rich_markup_mode="markdown")
HsmOpt = Annotated[bool, typer.Option("--hsm", help="--kms azure: create an RSA-HSM key (Premium vaults).")]


def _reference(info: PrimaryKeyInfo) -> str:
    name = info.details.get("key_id", info.name) if info.kms == "azure" else info.name
    return f"{info.kms}:{name}"


def _show_key(info: PrimaryKeyInfo) -> None:
    versions = ", ".join(f"v{v.version} ({v.state})" for v in info.versions)
    err.print(f"[bold]{_reference(info)}[/]  current version v{info.current_version}  versions: {versions}",
              markup=True)


def _where(kms: KeyManagementService) -> dict[str, str]:
    """What names a primary KMS in output: the key store path, the vault URL or the token."""
    if isinstance(kms, LocalKms):
        return {"keystore": str(kms.path)}
    if kms.name == "azure":
        return {"vault": str(kms.vault_url)}
    return {"token": str(getattr(kms, "token", kms.name))}


@app.command()
@key_options
def init(
    keys: KeySettings,
    key_name: KeyNameOpt = DEFAULT_KEY_NAME,
    hsm: HsmOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a primary key: in the key store (created if missing), in Azure Key Vault or in an HSM token.

    The passphrase comes from --passphrase-file, $PPML_KEYSTORE_PASSWORD, or a prompt. With --kms azure
    the key is an RSA-3072 Key Vault key (RSA-HSM with --hsm; AES-256 oct-HSM on a Managed HSM), created with
    your Azure identity (DefaultAzureCredential: az login, managed or workload identity). With --kms pkcs11
    it is a non-extractable AES-256 key generated inside the token.

    **Examples**

    * `ppml keys init`: key store in ~/.config/ppml, primary key "default"
    * `PPML_KEYSTORE=./ks.json ppml keys init --key-name tpch`
    * `ppml keys init --kms azure --vault kv1 --key-name tpch`
    * `PPML_PKCS11_PIN=... ppml keys init --kms pkcs11 --token ppml --key-name tpch`
    """
    if hsm and keys.kms != "azure":
        raise UsageError("--hsm is for --kms azure")
    kms = keys.replace(azure_hsm=hsm).primary(prompt=passphrase_prompt(confirm=True))
    created_store = isinstance(kms, LocalKms) and not kms.exists
    if created_store:
        kms.create_store()
    info = kms.create_key(key_name)
    if as_json:
        emit_json("keys.init", {"kms": kms.name, **_where(kms), "created_keystore": created_store,
                                "key": info.to_json()})
        return
    if created_store:
        err.print(f"Created key store {kms.path} (mode 0600).")
    details = info.details
    kind = f" ({details['kty']}{' ' + str(details['key_size']) if 'key_size' in details else ''})" \
        if "kty" in details else ""
    err.print(f"Created primary key [bold]{_reference(info)}[/]{kind} version v{info.current_version}.")
    options = "" if keys.kms == "local" else f" --kms {keys.kms}"
    named = "" if key_name == DEFAULT_KEY_NAME else f" --key-name {key_name}"
    err.print(f"Next: ppml keys data-key{options}{named} --out data-key.json")


@app.command("data-key")
@key_options
def data_key(
    keys: KeySettings,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="Data-key file to create (mode 0600).")],
    key_name: KeyNameOpt = DEFAULT_KEY_NAME,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a new data key, wrapped by a primary key, in a data-key file.

    The file holds only the wrapped key; the plaintext key never touches disk. With --bigdl-kms the key
    is a BigDL data key, for writing files BigDL can read (aes/cbc/pkcs5padding).

    **Examples**

    * `ppml keys data-key --out dk.json`
    * `ppml keys data-key --out dk.json --kms azure --vault kv1 --key-name tpch`
    * `ppml keys data-key --out bigdl-dk.json --bigdl-kms plaintext --bigdl-key env:BIGDL_PRIMARY_KEY`
    * `ppml keys data-key --out bigdl-dk.json --bigdl-kms AzureKeyManagementService --bigdl-key keys/primaryKey`
    """
    key, wrapped = keys.data_key_backend(prompt=passphrase_prompt()).generate_data_key(key_name)
    record = DataKeyFile.new(key.key_id, (wrapped,))
    record.save(out, replace=force)
    if as_json:
        emit_json("keys.data-key", {"path": str(out), **record.to_json()})
        return
    err.print(f"Wrote data key {key.key_id} to {out} (mode 0600), wrapped by {wrapped.reference}.")


@app.command("signing-key")
@key_options
def signing_key(
    keys: KeySettings,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE",
                                      help="Signing-key file to create (mode 0600); the public key goes beside it.")],
    key_name: KeyNameOpt = DEFAULT_KEY_NAME,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a key that signs provenance records, and publish its public key.

    The file holds the key only wrapped by a primary key, like a data-key file; give it to jobs
    (`PPMLContext(signing_key=...)`, `ppml tpch run --signing-key`). A key broker whose policy governs its
    primary key releases it only to attested workloads, so a valid signature proves the job ran in one.
    The public key (`FILE` with `.pub.pem`) verifies records: `ppml provenance verify RESULT --signer ...`.

    **Example**: `ppml keys signing-key --key-name signer --out signer.json`
    """
    from ppml.io.provenance import public_key_pem
    from ppml.keys import secure_files

    key, wrapped = keys.primary(prompt=passphrase_prompt()).generate_data_key(key_name)
    DataKeyFile.new(key.key_id, (wrapped,)).save(out, replace=force)
    public = out.with_name(out.stem + ".pub.pem")
    secure_files.write_private(public, public_key_pem(key), replace=force)
    public.chmod(0o644)  # a public key: readable by whoever verifies
    if as_json:
        emit_json("keys.signing-key", {"path": str(out), "public_key": str(public), "key_id": key.key_id,
                                       "wrapped_by": wrapped.reference})
        return
    err.print(f"Wrote signing key {key.key_id} to {out} (mode 0600), wrapped by {wrapped.reference}; its public "
              f"key to {public}.")


@app.command()
@key_options
def rotate(
    keys: KeySettings,
    key_name: KeyNameOpt = DEFAULT_KEY_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Add a new version of a primary key; new data keys are wrapped by it.

    Existing files stay readable (their headers name the version that wrapped them). Move them to the new
    version with `ppml rewrap PATH`. With --kms azure this adds a Key Vault key version (permission 'rotate').

    **Examples**

    * `ppml keys rotate && ppml rewrap ./encrypted`
    * `ppml keys rotate --kms azure --vault kv1 --key-name tpch`
    """
    info = keys.primary(prompt=passphrase_prompt()).rotate_key(key_name)
    if as_json:
        emit_json("keys.rotate", {"key": info.to_json()})
        return
    _show_key(info)
    err.print("Next: ppml rewrap PATH  (re-wraps data keys in headers and data-key files; no re-encryption)")


@app.command("list")
@key_options
def list_keys(
    keys: KeySettings,
    as_json: JsonOpt = False,
) -> None:
    """List the primary keys and their versions (no passphrase needed).

    **Examples**

    * `ppml keys list --json`
    * `ppml keys list --kms azure --vault kv1`
    """
    kms = keys.primary()
    infos = kms.list_keys()
    where = _where(kms)
    if as_json:
        emit_json("keys.list", {**where, "keys": [i.to_json() for i in infos]})
        return
    label = {"keystore": "Key store", "vault": "Key Vault", "token": "PKCS#11 token"}
    err.print(" ".join(f"{label[k]} {v}:" for k, v in where.items()))
    for info in infos:
        _show_key(info)


@app.command()
@key_options
def inspect(
    keys: KeySettings,
    file: Annotated[Optional[Path], typer.Argument(
        help="A data-key file or a key store file.", exists=True, dir_okay=False)] = None,
    key_name: KeyNameOpt = DEFAULT_KEY_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Show what a data-key file or key store holds, without unwrapping anything; or describe a primary key.

    **Examples**

    * `ppml keys inspect dk.json --json`
    * `ppml keys inspect --kms azure --vault kv1 --key-name tpch`: its versions, type and size
    """
    if file is None:
        if keys.kms == "local":
            raise UsageError("inspect needs a FILE (data-key file or key store), or --kms azure|pkcs11 --key-name NAME")
        info = keys.primary().describe_key(key_name)
        if as_json:
            emit_json("keys.inspect", {"type": f"{info.kms}-key", "key": info.to_json()})
            return
        details = info.details
        if "kty" in details:
            err.print(f"Key Vault key {details['key_id']}: {details['kty']}"
                      + (f" {details['key_size']}" if "key_size" in details else ""))
        _show_key(info)
        return
    if keys.kms != "local":
        raise UsageError(f"--kms {keys.kms} describes a primary key; give either it or a FILE")
    doc = json.loads(file.read_text(encoding="utf-8"))
    if str(doc.get("schema", "")).startswith("ppml.keystore/"):
        infos = LocalKms(file).list_keys()
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
@key_options
def retire(
    version: Annotated[str, typer.Argument(help="Version to retire, e.g. 1 or v1.")],
    keys: KeySettings,
    scan: Annotated[list[Path], typer.Option("--scan", metavar="DIR", help="Data folders to check for files "
                                             "still using the version (repeatable; required).")],
    confirm: Annotated[Optional[str], typer.Option("--confirm", metavar="NAME",
                                                   help="Repeat the key name to confirm.")] = None,
    key_name: KeyNameOpt = DEFAULT_KEY_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Destroy an old primary-key version, refused while any scanned file still uses it.

    **Examples**

    * `ppml keys retire 1 --scan ./encrypted --scan ./keys --confirm default`
    * `ppml keys retire 1 --kms pkcs11 --token ppml --key-name tpch --scan ./enc --confirm tpch`
    """
    version = version.removeprefix("v")
    if confirm != key_name:
        raise UsageError(f"retiring a key version destroys it; confirm with --confirm {key_name}")
    kms = keys.primary(prompt=passphrase_prompt())
    reference = f"{kms.name}:{kms.key_identifier(key_name)}#v{version}"
    usage: dict[str, int] = {}
    for folder in scan:
        for ref, count in rotation.key_usage(rotation.scan(str(folder))).items():
            usage[ref] = usage.get(ref, 0) + count
    if usage.get(reference):
        raise ConfigError(f"{usage[reference]} file(s) under the scanned folders still use {reference}",
                          hint=f"run 'ppml rewrap PATH --key-name {key_name}' on them first")
    info = kms.retire_version(key_name, version)
    if as_json:
        emit_json("keys.retire", {"retired": reference, "key": info.to_json()})
        return
    err.print(f"Retired {reference}.")
    _show_key(info)
