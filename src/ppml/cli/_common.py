"""What every command shares: the consoles, options, secret sources, progress and key access."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from ppml.errors import ConfigError, KeyAccessError, UsageError
from ppml.keys.keyring import KeyRing
from ppml.keys.kms import KeyManagementService, open_kms
from ppml.keys.local import KEYSTORE_ENV, PASSWORD_ENV, LocalKms
from ppml.keys.settings import read_secret_source

# Human text and progress go to stderr; stdout carries only data (JSON, decrypted bytes). Messages are not
# wrapped at the (default 80-column) width, so paths and key references stay whole for copying and grep.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

PASSPHRASE_FILE_ENV = "PPML_KEYSTORE_PASSWORD_FILE"
PASSPHRASE_SOURCE_ENV = "PPML_KEYSTORE_PASSWORD_SOURCE"
AZURE_VAULT_ENV = "PPML_AZURE_VAULT"
PKCS11_TOKEN_ENV = "PPML_PKCS11_TOKEN"
_AZURE_NAMES = ("azure", "azurekeymanagementservice")
JSON_SCHEMA = "ppml.cli/1"

KeystoreOpt = Annotated[Optional[Path], typer.Option(
    "--keystore", envvar=KEYSTORE_ENV, show_envvar=True,
    help="Key store file [default: ~/.config/ppml/keystore.json].")]
PassFileOpt = Annotated[Optional[Path], typer.Option(
    "--passphrase-file", envvar=PASSPHRASE_FILE_ENV, show_envvar=True,
    help=f"Read the key store passphrase from this file ('-' for stdin) instead of ${PASSWORD_ENV} or a prompt.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing destination.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, max=64, help="Files processed in parallel.")]
KeyNameOpt = Annotated[str, typer.Option("--key-name", help="Primary key name in the key store.")]
PrimaryKeyPlaintextOpt = Annotated[Optional[str], typer.Option(
    "--primary-key-plaintext", metavar="SOURCE",
    help="BigDL plaintext primary key (base64), read from SOURCE: env:VAR, file:PATH or - (stdin). "
         "Never the key itself: command lines are visible to other users.")]
BigdlKmsOpt = Annotated[Optional[str], typer.Option(
    "--kms", help="Key management service: local (default), azure (Key Vault: --vault or $PPML_AZURE_VAULT), "
                  "pkcs11 (HSM token $PPML_PKCS11_TOKEN); "
                  "BigDL types SimpleKeyManagementService or AzureKeyManagementService with --primary-key-file.")]
PrimaryKeyFileOpt = Annotated[Optional[Path], typer.Option(
    "--primary-key-file", help="BigDL primary-key file: SimpleKMS (16 digits) or AzureKeyManagementService "
                               "(the Key Vault key URL).")]
KmsOpt = Annotated[Optional[str], typer.Option(
    "--kms", help="Key management service: local (the key store, default), azure (Azure Key Vault, with --vault) "
                  "or pkcs11 (an HSM token: $PPML_PKCS11_TOKEN, $PPML_PKCS11_PIN).")]
VaultOpt = Annotated[Optional[str], typer.Option(
    "--vault", metavar="NAME|URL",
    help=f"Azure Key Vault name (kv1) or URL, for --kms azure [default: ${AZURE_VAULT_ENV}].")]
ClientIdOpt = Annotated[Optional[str], typer.Option(
    "--client-id", envvar="AZURE_CLIENT_ID", show_envvar=True,
    help="Client id of the user-assigned managed identity or workload identity that accesses Key Vault.")]
InsecureSimpleOpt = Annotated[bool, typer.Option(
    "--insecure-allow-simple-kms", help="Accept BigDL SimpleKMS keys, which give NO confidentiality.")]


def emit_json(kind: str, payload: dict[str, object]) -> None:
    doc: dict[str, object] = {"schema": JSON_SCHEMA, "kind": kind}
    # The CLI schema and kind win over same-named payload fields (a data-key file's own "schema").
    doc.update((name, value) for name, value in payload.items() if name not in doc)
    out.print_json(json.dumps(doc), indent=2)


def passphrase_source(passphrase_file: Path | None, *, confirm: bool = False):
    """A callable giving the key store passphrase: file, then environment, then an interactive prompt.

    ``$PPML_KEYSTORE_PASSWORD_SOURCE`` names a secret source (``azure-secret:VAULT/NAME``, ``file:PATH``,
    ``env:VAR``) and comes after ``--passphrase-file`` and before ``$PPML_KEYSTORE_PASSWORD``.
    """

    def get() -> str:
        if passphrase_file is not None:
            if str(passphrase_file) == "-":
                return sys.stdin.readline().rstrip("\n")
            try:
                return passphrase_file.read_text(encoding="utf-8").rstrip("\n")
            except OSError as exc:
                raise ConfigError(f"cannot read the passphrase file {passphrase_file}: {exc.strerror}") from None
        if os.environ.get(PASSPHRASE_SOURCE_ENV):
            return read_secret_source(os.environ[PASSPHRASE_SOURCE_ENV], what="key store passphrase")
        if os.environ.get(PASSWORD_ENV):
            return os.environ[PASSWORD_ENV]
        if sys.stdin.isatty():
            return typer.prompt("Key store passphrase", hide_input=True, confirmation_prompt=confirm, err=True)
        raise KeyAccessError("the key store passphrase is needed and there is no terminal to ask for it",
                             hint=f"set {PASSWORD_ENV} or pass --passphrase-file FILE")

    return get


def local_kms(keystore: Path | None, passphrase_file: Path | None, *, confirm: bool = False) -> LocalKms:
    return LocalKms(keystore, passphrase_source(passphrase_file, confirm=confirm))


def is_azure(kms: str | None) -> bool:
    """Whether ``--kms`` names Azure Key Vault (``azure``, or BigDL's ``AzureKeyManagementService``)."""
    return kms is not None and kms.lower() in _AZURE_NAMES


def azure_kms(vault: str | None, client_id: str | None = None, *, hsm: bool = False) -> KeyManagementService:
    """The Key Vault backend of ``--vault`` (or ``$PPML_AZURE_VAULT``)."""
    vault = vault or os.environ.get(AZURE_VAULT_ENV)
    if not vault:
        raise UsageError("--kms azure needs the vault: --vault NAME (or URL)",
                         hint=f"or set {AZURE_VAULT_ENV}=NAME; e.g. --vault kv1 for https://kv1.vault.azure.net")
    return open_kms("azure", vault=vault, client_id=client_id or None, hsm=hsm)


def pkcs11_kms() -> KeyManagementService:
    """The PKCS#11 token of ``$PPML_PKCS11_TOKEN`` (PIN from ``$PPML_PKCS11_PIN``, library from
    ``$PPML_PKCS11_MODULE`` or SoftHSM2's)."""
    token = os.environ.get(PKCS11_TOKEN_ENV)
    if not token:
        raise UsageError(f"--kms pkcs11 takes the token label from ${PKCS11_TOKEN_ENV}, which is not set",
                         hint=f"export {PKCS11_TOKEN_ENV}=LABEL and PPML_PKCS11_PIN=... (the user PIN); "
                              "PPML_PKCS11_MODULE names the PKCS#11 library if it is not SoftHSM2")
    return open_kms("pkcs11", token=token)


def primary_kms(kms: str | None, vault: str | None, client_id: str | None, keystore: Path | None,
                passphrase_file: Path | None, *, confirm: bool = False, hsm: bool = False) -> KeyManagementService:
    """The backend that holds primary keys for a command: the local key store, or Azure Key Vault."""
    if is_azure(kms):
        return azure_kms(vault, client_id, hsm=hsm)
    if kms is not None and kms.lower() == "pkcs11" and not vault and not hsm:
        return pkcs11_kms()
    if kms is not None and kms.lower() != "local":
        raise UsageError(f"--kms {kms} does not hold primary keys for this command",
                         hint="use --kms local, azure or pkcs11")
    if vault:
        raise UsageError("--vault is for --kms azure", hint="add --kms azure, or drop --vault")
    if hsm:
        raise UsageError("--hsm is for --kms azure")
    return local_kms(keystore, passphrase_file, confirm=confirm)


def bigdl_backends(primary_key_plaintext: str | None, kms: str | None, primary_key_file: Path | None,
                   insecure_simple: bool) -> list[KeyManagementService]:
    """Key-unwrapping backends named by ``--kms`` and the BigDL options, if any.

    ``--kms azure`` adds the Key Vault of ``$PPML_AZURE_VAULT``; ``--kms AzureKeyManagementService
    --primary-key-file F`` reads BigDL's Azure data keys with the Key Vault key URL in ``F``.
    """
    backends: list[KeyManagementService] = []
    if primary_key_plaintext:
        text = read_secret_source(primary_key_plaintext, what="BigDL plaintext primary key")
        try:
            material = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ConfigError("the BigDL plaintext primary key is not valid base64") from None
        backends.append(open_kms("bigdl-plaintext", primary_key=material))
    if is_azure(kms):
        if primary_key_file is not None:
            backends.append(open_kms("bigdl-azure", primary_key_file=primary_key_file))
        elif os.environ.get(AZURE_VAULT_ENV):
            backends.append(azure_kms(None))
        else:
            raise UsageError(f"--kms azure here takes the vault from ${AZURE_VAULT_ENV}, which is not set",
                             hint=f"export {AZURE_VAULT_ENV}=NAME (the vault's name or URL)")
    elif kms and kms.lower() == "pkcs11":
        backends.append(pkcs11_kms())
    elif kms:
        if kms.lower() not in ("simplekeymanagementservice", "simplekms"):
            raise UsageError(f"--kms {kms} is not a BigDL key type this command reads",
                             hint="use --kms SimpleKeyManagementService with --primary-key-file, "
                                  "--kms AzureKeyManagementService with --primary-key-file (the Key Vault key URL), "
                                  "or --primary-key-plaintext for plaintext primary keys")
        if primary_key_file is None:
            raise UsageError("--kms SimpleKeyManagementService needs --primary-key-file")
        backends.append(open_kms("SimpleKeyManagementService", primary_key_file=primary_key_file,
                                 allow_insecure=insecure_simple))
    elif primary_key_file is not None:
        raise UsageError("--primary-key-file needs --kms SimpleKeyManagementService or AzureKeyManagementService")
    return backends


def keyring(keystore: Path | None, passphrase_file: Path | None,
            extra: list[KeyManagementService] | None = None) -> KeyRing:
    """A key ring with the local key store (opened on first use) and any extra backends.

    Envelopes wrapped by Azure Key Vault open through the vault of ``$PPML_AZURE_VAULT`` when it is set.
    With ``$PPML_BROKER_URL`` set, every wrapped key goes to that key broker first (attested release).
    """
    from ppml.keys.settings import KeySettings

    def open_backend(name: str) -> KeyManagementService | None:
        if name == "local":
            return local_kms(keystore, passphrase_file)
        if name == "azure" and os.environ.get(AZURE_VAULT_ENV):
            return azure_kms(None)
        if name == "pkcs11" and os.environ.get(PKCS11_TOKEN_ENV):
            return pkcs11_kms()
        return None

    broker = KeySettings().broker_kms()
    return KeyRing(([broker] if broker else []) + (extra or []), open_backend)


@contextlib.contextmanager
def byte_progress(description: str, total: int | None) -> Iterator:
    """A progress bar on stderr (hidden when stderr is not a terminal; ``total=None`` for a stream of
    unknown size); yields an ``advance(n)`` callable."""
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def demo_keys(directory: Path, key_name: str, key_file: Path, say) -> tuple[LocalKms, object, object]:
    """The demos' key store, primary key and data key in ``directory``, created once and then reused.

    Without ``$PPML_KEYSTORE_PASSWORD`` the demo keeps its own random passphrase in ``keystore.pass``
    (mode 0600). ``say(text, **facts)`` reports each step. Returns the KMS, the data-key file and the key.
    """
    import secrets

    from ppml.keys import secure_files
    from ppml.keys.datakey_file import DataKeyFile

    passphrase = os.environ.get(PASSWORD_ENV)
    if not passphrase:
        pass_file = directory / "keystore.pass"
        if not pass_file.exists():
            secure_files.write_private(pass_file, secrets.token_urlsafe(24).encode())
        passphrase = pass_file.read_text().strip()
        say(f"No {PASSWORD_ENV} set: using the demo's own random passphrase in {pass_file} (mode 0600). "
            "Real deployments set their own passphrase.")
    kms = LocalKms(directory / "keystore.json", passphrase)
    if kms.exists:
        say(f"Reusing the key store {kms.path}.")
    else:
        kms.create_store()
        say(f"Created a key store {kms.path}: primary keys encrypted under an Argon2id key from the passphrase.")
    if key_name not in {k.name for k in kms.list_keys()}:
        kms.create_key(key_name)
        say(f"Created primary key local:{key_name} (version 1). It never leaves the key store unencrypted.")
    if not key_file.exists():
        key, wrapped = kms.generate_data_key(key_name)
        DataKeyFile.new(key.key_id, (wrapped,)).save(key_file)
        say(f"Created a data key and saved only its wrapped form to {key_file.name} (mode 0600).",
            key_id=key.key_id, wrapped_by=wrapped.reference)
    record, key = KeyRing([kms]).open_data_key_file(str(key_file))
    return kms, record, key
