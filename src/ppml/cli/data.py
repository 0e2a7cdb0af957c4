"""Data verbs: ``encrypt``, ``decrypt``, ``inspect``, ``verify``, ``rewrap``, ``rekey``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ppml.cli._common import ForceOpt, JsonOpt, WorkersOpt, byte_progress, emit_json, err, exit_for_failures
from ppml.cli.options import KeyNameOpt, key_options, passphrase_prompt
from ppml.crypto.formats import DEFAULT_FORMAT, available_formats, get_format
from ppml.errors import UsageError
from ppml.io import files, rotation
from ppml.io.encryption import prepare_encryption
from ppml.io.storage import locate
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.local import DEFAULT_KEY_NAME
from ppml.keys.settings import KeySettings

ModeOpt = Annotated[Optional[str], typer.Option(
    "--mode", metavar="MODE", help="Crypto mode: " + ", ".join(available_formats()) + ".")]
SegmentOpt = Annotated[Optional[str], typer.Option(
    "--segment", metavar="PRESET",
    help=f"Segment preset of {DEFAULT_FORMAT}: " + ", ".join(get_format(DEFAULT_FORMAT).segment_presets)
    + " [default: the 1 MB one].")]
DataKeyOpt = Annotated[Optional[Path], typer.Option(
    "--data-key", metavar="FILE", help="Data-key file (from 'ppml keys data-key').")]
MinVersionOpt = Annotated[Optional[int], typer.Option(
    "--min-version", metavar="N", min=1,
    help="Refuse a data set older than version N (a rollback); N from a trusted record.")]

STDIO = "-"


def _total(path: str) -> int:
    return sum(size for _, size in locate(path).files())


def refuse_stdin_secrets(keys: KeySettings) -> None:
    """Standard input carries the data: a secret read from it too would swallow the start of the data."""
    sources = {"--passphrase-file": keys.passphrase, "--bigdl-key": keys.bigdl_primary_key,
               "PPML_KEYSTORE_PASSWORD_SOURCE": os.environ.get("PPML_KEYSTORE_PASSWORD_SOURCE")}
    for name, value in sources.items():
        if value == STDIO:
            raise UsageError(f"standard input carries the data to encrypt, so {name} cannot read it too",
                             hint="give the secret as a file (file:PATH) or an environment variable (env:VAR)")


def _summary(report, verb: str) -> None:
    rate = report.bytes / report.seconds / 1e6 if report.seconds else 0.0
    err.print(f"{verb} {report.files} file(s), {report.bytes:,} bytes in {report.seconds:.2f} s ({rate:,.0f} MB/s).")


def register(app: typer.Typer) -> None:
    @app.command()
    @key_options
    def encrypt(
        src: Annotated[str, typer.Argument(help="File or folder to encrypt (local path or URL), or - for standard "
                                                "input.")],
        dst: Annotated[str, typer.Argument(help="Encrypted file or folder to create.")],
        keys: KeySettings,
        data_key: DataKeyOpt = None,
        mode: ModeOpt = None,
        segment: SegmentOpt = None,
        force: ForceOpt = False,
        workers: WorkersOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Encrypt a file or a whole folder under a data key.

        Folders are processed in parallel and written atomically: a failed run leaves no output.
        In a folder each file gets the mode's suffix (.ppml, or .cbc for BigDL).

        **Examples**

        * `ppml encrypt orders.csv orders.csv.ppml --data-key dk.json`
        * `ppml encrypt ./tpch ./tpch-enc --data-key dk.json --workers 4`
        * `pg_dump sales | ppml encrypt - sales.sql.ppml --data-key dk.json`
        * `ppml encrypt ./out ./out-bigdl --mode aes/cbc/pkcs5padding --data-key bigdl-dk.json
          --bigdl-kms plaintext --bigdl-key env:PK`
        """
        if data_key is None:
            raise UsageError("encrypt needs --data-key FILE", hint="create one with 'ppml keys data-key --out FILE'")
        if dst == STDIO:
            raise UsageError("encrypt writes to a file or folder, not to standard output",
                             hint="name the encrypted file, e.g. ppml encrypt - data.csv.ppml --data-key dk.json")
        if src == STDIO:
            refuse_stdin_secrets(keys)
        encryption = prepare_encryption(data_key, keys, mode=mode, segment=segment, prompt=passphrase_prompt())
        if src == STDIO:
            with byte_progress("encrypting", None) as advance:
                report = files.encrypt_stream(sys.stdin.buffer, dst, force=force, progress=advance,
                                              **encryption.writer_arguments())
        else:
            with byte_progress("encrypting", _total(src)) as advance:
                report = files.encrypt(src, dst, force=force, workers=workers, progress=advance,
                                       **encryption.writer_arguments())
        if as_json:
            emit_json("encrypt", report.to_json())
        else:
            _summary(report, "Encrypted")

    @app.command()
    @key_options
    def decrypt(
        src: Annotated[str, typer.Argument(help="Encrypted file or folder.")],
        dst: Annotated[str, typer.Argument(help="Plaintext file or folder to create, or - for standard output.")],
        keys: KeySettings,
        data_key: DataKeyOpt = None,
        mode: ModeOpt = None,
        min_version: MinVersionOpt = None,
        force: ForceOpt = False,
        workers: WorkersOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Decrypt a file or folder. Each file's header names its key and mode.

        Without --data-key the key is unwrapped from each file's header through the key options. A folder
        is first checked against its data-set manifest (no file missing, added or replaced); every byte is
        authenticated before it is written; a failed run leaves no output file. To standard output (-)
        the plaintext streams out segment by segment.

        **Examples**

        * `ppml decrypt orders.csv.ppml orders.csv`
        * `ppml decrypt ./tpch-enc ./tpch-plain --workers 4`
        * `ppml decrypt orders.csv.ppml - | head`: as a stream; the exit code says whether the whole file was
          authentic (bytes before a damaged segment are already out)
        * `ppml decrypt ./bigdl-out ./plain --bigdl-kms plaintext --bigdl-key env:BIGDL_PRIMARY_KEY`
        """
        if src == STDIO:
            raise UsageError("decrypt reads a file or folder, not standard input",
                             hint="save the encrypted stream to a file first; decrypting to standard output works")
        if dst == STDIO and as_json:
            raise UsageError("--json cannot share standard output with the plaintext", hint="decrypt to a file")
        ring = keys.keyring(prompt=passphrase_prompt())
        key = ring.open_data_key_file(str(data_key))[1] if data_key else None
        with byte_progress("decrypting", _total(src)) as advance:
            if dst == STDIO:
                report = files.decrypt_stream(src, sys.stdout.buffer, keyring=ring, key=key, mode=mode,
                                              progress=advance)
            else:
                report = files.decrypt(src, dst, keyring=ring, key=key, mode=mode, force=force, workers=workers,
                                       progress=advance, min_version=min_version)
        if as_json:
            emit_json("decrypt", report.to_json())
        else:
            _summary(report, "Decrypted")

    @app.command()
    def inspect(
        path: Annotated[str, typer.Argument(help="Encrypted file.")],
        mode: ModeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Show a file's header facts (format, segment size, wrapping keys) without any key.

        **Example**: `ppml inspect orders.csv.ppml --json`
        """
        location = locate(path)
        info = files.describe(location, get_format(mode) if mode else None)
        payload = {"path": location.url, "format": info.format, **info.facts,
                   "wrapped_by": [{"reference": w.reference, "kms": w.kms, "key": w.key, "version": w.version}
                                  for w in info.envelope]}
        if as_json:
            emit_json("inspect", payload)
            return
        err.print(f"[bold]{location.url}[/]")
        for name, value in payload.items():
            if name not in ("path", "wrapped_by"):
                err.print(f"  {name}: {value}")
        for entry in payload["wrapped_by"]:
            err.print(f"  wrapped by: {entry['reference']}")

    @app.command()
    @key_options
    def verify(
        path: Annotated[str, typer.Argument(help="Encrypted file or folder.")],
        keys: KeySettings,
        data_key: DataKeyOpt = None,
        mode: ModeOpt = None,
        min_version: MinVersionOpt = None,
        workers: WorkersOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Authenticate a folder's data-set manifest and every segment of every file (exit 4 if any fails).

        Reports the data set's id and version; a folder without a manifest is checked file by file, with a
        warning that files deleted, added or replaced cannot be detected.

        **Examples**

        * `ppml verify ./tpch-enc`
        * `ppml verify ./results/Q01 --min-version 3 --json`
        """
        ring = keys.keyring(prompt=passphrase_prompt())
        key = ring.open_data_key_file(str(data_key))[1] if data_key else None
        with byte_progress("verifying", _total(path)) as advance:
            report = files.verify(path, keyring=ring, key=key, mode=mode, workers=workers, progress=advance,
                                  min_version=min_version)
        bad = [d for d in report.details if not d["ok"]]
        if as_json:
            emit_json("verify", {**report.to_json(), "ok": not bad})
        else:
            for entry in bad:
                err.print(f"[red]FAILED[/] {escape(str(entry['path']))}: {escape(str(entry['error']['message']))}")
            files_checked = [d for d in report.details if d.get("kind") != "data set"]
            err.print(f"{len(files_checked) - len([d for d in bad if d.get('kind') != 'data set'])} of "
                      f"{len(files_checked)} file(s) verified.")
            if report.dataset:
                err.print(f"Data set {report.dataset['id']}, version {report.dataset['version']}: "
                          f"{report.dataset['members']} member(s) as recorded.")
        exit_for_failures(report.details)

    @app.command()
    @key_options
    def rewrap(
        path: Annotated[str, typer.Argument(help="Folder (or file) with encrypted files and data-key files.")],
        keys: KeySettings,
        key_name: KeyNameOpt = DEFAULT_KEY_NAME,
        remove: Annotated[Optional[list[str]], typer.Option(
            "--remove", metavar="REF", help="Drop copies wrapped by this key (kms:key or kms:key#vN); repeatable.")
        ] = None,
        workers: WorkersOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Re-wrap data keys in file headers and data-key files with the current primary-key version.

        No plaintext is produced and no data is re-encrypted; headers are rewritten in place. Reports how
        many files remain on each key version.

        **Examples**

        * `ppml keys rotate && ppml rewrap ./tpch-enc`
        * `ppml rewrap ./tpch-enc --kms azure --vault kv1 --key-name tpch` (after `ppml keys rotate --kms azure ...`)
        """
        prompt = passphrase_prompt()
        kms = keys.primary(prompt=prompt)
        report = rotation.rewrap(path, keyring=keys.keyring(prompt=prompt), backend=kms, key_name=key_name,
                                 remove=remove or [], workers=workers)
        usage = rotation.key_usage(rotation.scan(path))
        if as_json:
            emit_json("rewrap", {**report.to_json(), "usage": dict(usage)})
        else:
            for entry in report.details:
                if entry["status"] != "rewrapped":
                    err.print(f"{entry['status']}: {entry['path']}: "
                              f"{entry.get('reason') or entry['error']['message']}")
            err.print(f"Re-wrapped {report.files} file(s) in {report.seconds:.2f} s. Files per key version:")
            for reference, count in sorted(usage.items()):
                err.print(f"  {reference}: {count}")
        exit_for_failures(report.details)

    @app.command()
    @key_options
    def rekey(
        path: Annotated[str, typer.Argument(help="Folder (or file) of encrypted files to re-encrypt.")],
        keys: KeySettings,
        out_data_key: Annotated[Path, typer.Option("--out-data-key", metavar="FILE",
                                                   help="Where to save the new data key.")],
        key_name: KeyNameOpt = DEFAULT_KEY_NAME,
        workers: WorkersOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Re-encrypt data under a new data key (each file replaced atomically; plaintext stays in memory).

        The new data key comes from the primary KMS (or the BigDL key type); each file keeps its format
        and layout. Files whose format takes another kind of key are reported and left as they are.

        **Examples**

        * `ppml rekey ./tpch-enc --out-data-key dk-2.json`
        * `ppml rekey ./tpch-enc --out-data-key dk-2.json --kms pkcs11 --token ppml --key-name tpch`
        """
        prompt = passphrase_prompt()
        new_key, wrapped = keys.data_key_backend(prompt=prompt).generate_data_key(key_name)
        record = DataKeyFile.new(new_key.key_id, (wrapped,))
        record.save(out_data_key)  # saved before any file depends on it
        with byte_progress("re-encrypting", _total(path)) as advance:
            report = rotation.rekey(path, keyring=keys.keyring(prompt=prompt), key=new_key,
                                    envelope=record.envelope, workers=workers, progress=advance)
        if as_json:
            emit_json("rekey", {**report.to_json(), "data_key": str(out_data_key), "key_id": record.key_id})
        else:
            for entry in report.details:
                if entry["status"] == "failed":
                    err.print(f"[red]failed[/] {entry['path']}: {entry['error']['message']}")
                elif entry["status"] == "skipped":
                    err.print(f"skipped {entry['path']}: {entry['reason']}")
            _summary(report, "Re-encrypted")
            err.print(f"New data key {record.key_id} saved to {out_data_key}.")
        exit_for_failures(report.details)
