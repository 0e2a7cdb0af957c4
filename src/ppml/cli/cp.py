"""``ppml cp``: copy files and folders between local disks and Azure storage, optionally encrypting on the way."""

from __future__ import annotations

import posixpath
from typing import Annotated

import typer

from ppml.cli._common import ForceOpt, JsonOpt, WorkersOpt, byte_progress, emit_json, err, shown
from ppml.cli.data import DataKeyOpt, ModeOpt, SegmentOpt, refuse_stdin_secrets
from ppml.cli.options import key_options, passphrase_prompt
from ppml.errors import UsageError
from ppml.io import files
from ppml.io.encryption import prepare_encryption
from ppml.io.storage import Location, locate
from ppml.keys.settings import KeySettings

__all__ = ["register", "cp"]

def _destination(source: Location, dst: str) -> str:
    """``DST``, or ``DST/<name of SRC>`` when DST ends with ``/`` or is a whole Azure container."""
    target = locate(dst)
    container_root = target.is_azure and "/" not in target.path.strip("/")
    if dst.endswith("/") or container_root:
        return dst.rstrip("/") + "/" + posixpath.basename(source.path.rstrip("/"))
    return dst


@key_options
def cp(
    src: Annotated[str, typer.Argument(help="File or folder to copy: local path or abfs://, abfss://, az:// URL.")],
    dst: Annotated[str, typer.Argument(
        help="Destination path or URL; ending in / (or a bare container) means: into it, under SRC's name.")],
    keys: KeySettings,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Copy a folder and everything below it.")] = False,
    encrypt: Annotated[bool, typer.Option(
        "--encrypt", help="Encrypt while copying (needs --data-key); plaintext never reaches the destination.")] = False,
    data_key: DataKeyOpt = None,
    mode: ModeOpt = None,
    segment: SegmentOpt = None,
    workers: WorkersOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy a file or folder local ↔ Azure or Azure ↔ Azure, in parallel, with a byte progress bar.

    Without --encrypt bytes are copied as they are (e.g. to upload data that is already encrypted);
    between two paths of one storage account the copy is server-side. With --encrypt each file is
    encrypted as it streams (in a folder each gets the mode's suffix, .ppml). The destination appears
    only when complete (on Blob storage: staged, then copied into place; see docs/azure.md).
    Credentials: AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT_NAME with
    AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, or DefaultAzureCredential.

    **Examples**

    * `ppml cp -r ./tpch abfs://data/tpch-enc --encrypt --data-key dk.json`
    * `ppml cp -r ./tpch-enc abfss://data@acct.dfs.core.windows.net/ --workers 16`
    * `ppml cp az://data/results/Q01 ./Q01 -r && ppml decrypt ./Q01 ./Q01-plain`
    """
    source = locate(src)
    if source.is_dir() and not recursive:
        raise UsageError(f"{source.url} is a folder", hint="pass --recursive (-r) to copy a folder")
    if not encrypt and (data_key is not None or mode is not None or segment is not None):
        raise UsageError("--data-key, --mode and --segment are for --encrypt", hint="add --encrypt, or drop them")
    target = _destination(source, dst)
    total = sum(size for _, size in source.files(include_hidden=not encrypt))
    if encrypt:
        if data_key is None:
            raise UsageError("--encrypt needs --data-key FILE", hint="create one with 'ppml keys data-key --out FILE'")
        refuse_stdin_secrets(keys)
        encryption = prepare_encryption(data_key, keys, mode=mode, segment=segment, prompt=passphrase_prompt())
        with byte_progress("encrypting", total) as advance:
            report = files.encrypt(src, target, force=force, workers=workers, progress=advance,
                                   **encryption.writer_arguments())
    else:
        with byte_progress("copying", total) as advance:
            report = files.copy(src, target, force=force, workers=workers, progress=advance)
    report.operation = "cp"
    if as_json:
        emit_json("cp", {**report.to_json(), "source": source.url, "destination": target, "encrypted": encrypt})
        return
    rate = report.bytes / report.seconds / 1e6 if report.seconds else 0.0
    verb = "Encrypted and copied" if encrypt else "Copied"
    err.print(f"{verb} {report.files} file(s), {report.bytes:,} bytes to {shown(target)} in {report.seconds:.2f} s "
              f"({rate:,.0f} MB/s).")


def register(app: typer.Typer) -> None:
    app.command("cp")(cp)
