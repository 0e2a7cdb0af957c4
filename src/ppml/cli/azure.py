"""``ppml azure``: Azure Key Vault secrets for passwords (key stores, keystores), like BigDL's generate-password-az.sh.

The Azure SDK is imported only when a command runs, so the rest of the command line works without the
``azure`` extra.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ppml.cli._common import ForceOpt, JsonOpt, emit_json, err
from ppml.cli.options import ClientIdOpt, VaultOpt
from ppml.errors import AlreadyExistsError, ConfigError, UsageError
from ppml.keys import secure_files

app = typer.Typer(help="Azure Key Vault: secrets for passwords (keys live under 'ppml keys --kms azure').",
                  no_args_is_help=True, rich_markup_mode="markdown")
secret_app = typer.Typer(help="Store, read and generate Key Vault secrets; values never appear as flags.",
                         no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(secret_app, name="secret")

NameArg = Annotated[str, typer.Argument(help="Secret name (letters, digits, hyphens).")]


def _azure():
    try:
        from ppml.keys import azure_secrets
    except ImportError as exc:
        raise ConfigError(f"Azure Key Vault support needs packages that are not installed ({exc.name})",
                          hint="pip install 'ppml[azure]'") from None
    return azure_secrets


def _vault(vault: str | None) -> str:
    if not vault:
        raise UsageError("name the vault: --vault NAME (or URL)", hint="or set PPML_AZURE_VAULT")
    return vault


def _refuse_existing(azure, vault: str, name: str, client_id: str | None, force: bool) -> None:
    if force:
        return
    version = azure.secret_exists(vault, name, client_id=client_id)
    if version is not None:
        from ppml.keys.azure_vault import vault_url  # here, like azure_secrets: the CLI runs without the extra

        raise AlreadyExistsError(
            f"secret {name!r} already exists in Key Vault {vault_url(vault)} (version {version})",
            hint="pass --force to add a new version (readers of the latest version then get the new value; "
                 "older versions stay readable by version)")


def _store(azure, vault: str, name: str, value: str, client_id: str | None, as_json: bool, verb: str) -> None:
    url, version = azure.set_secret(vault, name, value, client_id=client_id)
    if as_json:
        emit_json(f"azure.secret.{verb}", {"vault": url, "name": name, "version": version,
                                          "id": f"{url}/secrets/{name}/{version}", "length": len(value)})
        return
    err.print(f"Stored secret [bold]{name}[/] version {version} in Key Vault {url}.")


@secret_app.command("set")
def set_(
    name: NameArg,
    value_file: Annotated[Optional[Path], typer.Option(
        "--value-file", help="Read the value from this file ('-' for stdin). Default: stdin, or a prompt.")] = None,
    vault: VaultOpt = None,
    client_id: ClientIdOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Store a secret in Key Vault from a file, stdin or a prompt (never from a flag).

    A single trailing newline is dropped. Refuses to replace an existing secret without --force.

    **Examples**

    * `ppml azure secret set keystore-pass --vault kv1 --value-file pass.txt`
    * `printf %s "$PW" | ppml azure secret set key-pass --vault kv1`
    """
    azure = _azure()
    vault = _vault(vault)
    if value_file is not None and str(value_file) != "-":
        try:
            value = value_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {value_file}: {exc.strerror}") from None
    elif value_file is not None or not sys.stdin.isatty():
        value = sys.stdin.read()
    else:
        value = typer.prompt(f"Value of secret {name}", hide_input=True, confirmation_prompt=True, err=True)
    value = value[:-1] if value.endswith("\n") else value
    value = value[:-1] if value.endswith("\r") else value
    if not value:
        raise UsageError("the secret value is empty")
    _refuse_existing(azure, vault, name, client_id, force)
    _store(azure, vault, name, value, client_id, as_json, "set")


@secret_app.command()
def get(
    name: NameArg,
    vault: VaultOpt = None,
    version: Annotated[Optional[str], typer.Option("--version", help="A secret version (default: latest).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write the value to this file (mode 0600).")] = None,
    show: Annotated[bool, typer.Option("--show", help="Print the value even when stdout is a terminal.")] = False,
    client_id: ClientIdOpt = None,
    force: ForceOpt = False,
) -> None:
    """Read a secret to a file (mode 0600) or to stdout; a terminal gets it only with --show.

    **Examples**

    * `ppml azure secret get keystore-pass --vault kv1 --out /run/secrets/keystore-pass`
    * `export PW="$(ppml azure secret get key-pass --vault kv1)"`
    """
    azure = _azure()
    vault = _vault(vault)
    if out is None and sys.stdout.isatty() and not show:
        raise UsageError("refusing to print a secret to the terminal",
                         hint="write it to a file with --out FILE, pipe it, or pass --show")
    value = azure.get_secret(vault, name, version=version, client_id=client_id)
    if out is not None:
        secure_files.write_private(out, value.encode("utf-8"), replace=force)
        err.print(f"Wrote secret {name} to {out} (mode 0600).")
        return
    sys.stdout.write(value + ("\n" if sys.stdout.isatty() else ""))
    sys.stdout.flush()


@secret_app.command()
def generate(
    name: NameArg,
    length: Annotated[int, typer.Option("--length", min=16, max=1024, help="Characters (6 random bits each).")] = 32,
    vault: VaultOpt = None,
    client_id: ClientIdOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate a random password and store it as a Key Vault secret; it is never printed.

    The counterpart of BigDL's generate-password-az.sh. Read it back with `ppml azure secret get`, or let ppml
    read it where needed: `PPML_KEYSTORE_PASSWORD_SOURCE=azure-secret:kv1/NAME`.

    **Examples**

    * `ppml azure secret generate keystore-pass --vault kv1`
    * `ppml azure secret generate key-pass --vault kv1 --length 48`
    """
    azure = _azure()
    vault = _vault(vault)
    _refuse_existing(azure, vault, name, client_id, force)
    _store(azure, vault, name, azure.generate_password(length), client_id, as_json, "generate")
