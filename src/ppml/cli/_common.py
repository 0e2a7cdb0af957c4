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

# Human text and progress go to stderr; stdout carries only data (JSON, decrypted bytes). Messages are not
# wrapped at the (default 80-column) width, so paths and key references stay whole for copying and grep.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

PASSPHRASE_FILE_ENV = "PPML_KEYSTORE_PASSWORD_FILE"
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
    "--kms", help="BigDL KMS type of the data key: SimpleKeyManagementService (with --primary-key-file).")]
PrimaryKeyFileOpt = Annotated[Optional[Path], typer.Option(
    "--primary-key-file", help="BigDL SimpleKMS primary-key file (16 digits).")]
InsecureSimpleOpt = Annotated[bool, typer.Option(
    "--insecure-allow-simple-kms", help="Accept BigDL SimpleKMS keys, which give NO confidentiality.")]


def emit_json(kind: str, payload: dict[str, object]) -> None:
    doc: dict[str, object] = {"schema": JSON_SCHEMA, "kind": kind}
    # The CLI schema and kind win over same-named payload fields (a data-key file's own "schema").
    doc.update((name, value) for name, value in payload.items() if name not in doc)
    out.print_json(json.dumps(doc), indent=2)


def read_secret_source(source: str, *, what: str) -> str:
    """A secret from ``env:VAR``, ``file:PATH`` or ``-``; a literal value is refused."""
    if source == "-":
        return sys.stdin.readline().strip()
    kind, _, rest = source.partition(":")
    if kind == "env" and rest:
        if not os.environ.get(rest):
            raise ConfigError(f"the environment variable {rest} for the {what} is not set")
        return os.environ[rest].strip()
    if kind == "file" and rest:
        path = Path(rest).expanduser()
        if not path.is_file():
            raise ConfigError(f"the {what} file {path} does not exist")
        return path.read_text(encoding="utf-8").strip()
    raise UsageError(
        f"the {what} must be given as env:VAR, file:PATH or '-', not as a value",
        hint="secrets on a command line end up in shell history and process lists; "
             "e.g. export PRIMARY_KEY=...; --primary-key-plaintext env:PRIMARY_KEY",
    )


def passphrase_source(passphrase_file: Path | None, *, confirm: bool = False):
    """A callable giving the key store passphrase: file, then environment, then an interactive prompt."""

    def get() -> str:
        if passphrase_file is not None:
            if str(passphrase_file) == "-":
                return sys.stdin.readline().rstrip("\n")
            try:
                return passphrase_file.read_text(encoding="utf-8").rstrip("\n")
            except OSError as exc:
                raise ConfigError(f"cannot read the passphrase file {passphrase_file}: {exc.strerror}") from None
        if os.environ.get(PASSWORD_ENV):
            return os.environ[PASSWORD_ENV]
        if sys.stdin.isatty():
            return typer.prompt("Key store passphrase", hide_input=True, confirmation_prompt=confirm, err=True)
        raise KeyAccessError("the key store passphrase is needed and there is no terminal to ask for it",
                             hint=f"set {PASSWORD_ENV} or pass --passphrase-file FILE")

    return get


def local_kms(keystore: Path | None, passphrase_file: Path | None, *, confirm: bool = False) -> LocalKms:
    return LocalKms(keystore, passphrase_source(passphrase_file, confirm=confirm))


def bigdl_backends(primary_key_plaintext: str | None, kms: str | None, primary_key_file: Path | None,
                   insecure_simple: bool) -> list[KeyManagementService]:
    """BigDL key-unwrapping backends named by the BigDL options, if any."""
    backends: list[KeyManagementService] = []
    if primary_key_plaintext:
        text = read_secret_source(primary_key_plaintext, what="BigDL plaintext primary key")
        try:
            material = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ConfigError("the BigDL plaintext primary key is not valid base64") from None
        backends.append(open_kms("bigdl-plaintext", primary_key=material))
    if kms:
        if kms.lower() not in ("simplekeymanagementservice", "simplekms"):
            raise UsageError(f"--kms {kms} is not a BigDL key type this command reads",
                             hint="use --kms SimpleKeyManagementService with --primary-key-file, "
                                  "or --primary-key-plaintext for plaintext primary keys")
        if primary_key_file is None:
            raise UsageError("--kms SimpleKeyManagementService needs --primary-key-file")
        backends.append(open_kms("SimpleKeyManagementService", primary_key_file=primary_key_file,
                                 allow_insecure=insecure_simple))
    elif primary_key_file is not None:
        raise UsageError("--primary-key-file needs --kms SimpleKeyManagementService")
    return backends


def keyring(keystore: Path | None, passphrase_file: Path | None,
            extra: list[KeyManagementService] | None = None) -> KeyRing:
    """A key ring with the local key store (opened on first use) and any extra backends."""

    def open_backend(name: str) -> KeyManagementService | None:
        return local_kms(keystore, passphrase_file) if name == "local" else None

    return KeyRing(extra or [], open_backend)


@contextlib.contextmanager
def byte_progress(description: str, total: int) -> Iterator:
    """A progress bar on stderr (hidden when stderr is not a terminal); yields an ``advance(n)`` callable."""
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
