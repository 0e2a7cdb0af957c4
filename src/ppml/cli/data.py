"""Data verbs: ``encrypt``, ``decrypt``, ``inspect``, ``verify``, ``rewrap``, ``rekey``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ppml.cli._common import (
    PASSPHRASE_SOURCE_ENV,
    BigdlKmsOpt,
    ClientIdOpt,
    ForceOpt,
    InsecureSimpleOpt,
    JsonOpt,
    KeyNameOpt,
    KeystoreOpt,
    KmsOpt,
    PassFileOpt,
    PrimaryKeyFileOpt,
    PrimaryKeyPlaintextOpt,
    VaultOpt,
    WorkersOpt,
    bigdl_backends,
    byte_progress,
    emit_json,
    err,
    keyring,
    local_kms,
    primary_kms,
)
from ppml.crypto.formats import DEFAULT_FORMAT, get_format
from ppml.crypto.gcm_stream import SEGMENT_PRESETS
from ppml.errors import IntegrityError, UsageError
from ppml.io import files, rotation
from ppml.io.storage import locate
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.local import DEFAULT_KEY_NAME

ModeOpt = Annotated[Optional[str], typer.Option(
    "--mode", help="Crypto mode: aes_gcm_stream, aes/cbc/pkcs5padding (alias aes_cbc_pkcs5padding), plain_text.")]
DataKeyOpt = Annotated[Optional[Path], typer.Option("--data-key", help="Data-key file (from 'ppml keys data-key').")]
_BIGDL_KMS = {"bigdl-plaintext", "SimpleKeyManagementService", "bigdl-azure"}


STDIO = "-"


def _total(path: str) -> int:
    return sum(size for _, size in locate(path).files())


def _refuse_stdin_secrets(passphrase_file: Path | None, primary_key_plaintext: str | None) -> None:
    """Standard input carries the data: a secret read from it too would swallow the start of the data."""
    sources = {"--passphrase-file": str(passphrase_file) if passphrase_file else None,
               "--primary-key-plaintext": primary_key_plaintext,
               PASSPHRASE_SOURCE_ENV: os.environ.get(PASSPHRASE_SOURCE_ENV)}
    for name, value in sources.items():
        if value == STDIO:
            raise UsageError(f"standard input carries the data to encrypt, so {name} cannot read it too",
                             hint="give the secret as a file (file:PATH) or an environment variable (env:VAR)")


def _summary(report: files.Report, verb: str) -> None:
    rate = report.bytes / report.seconds / 1e6 if report.seconds else 0.0
    err.print(f"{verb} {report.files} file(s), {report.bytes:,} bytes in {report.seconds:.2f} s ({rate:,.0f} MB/s).")


def register(app: typer.Typer) -> None:
    @app.command()
    def encrypt(
        src: Annotated[str, typer.Argument(help="File or folder to encrypt (local path or URL), or - for standard "
                                                "input.")],
        dst: Annotated[str, typer.Argument(help="Encrypted file or folder to create.")],
        data_key: DataKeyOpt = None,
        mode: ModeOpt = DEFAULT_FORMAT,
        segment: Annotated[str, typer.Option(
            "--segment", help="aes_gcm_stream segment preset: " + ", ".join(SEGMENT_PRESETS))] = "AES256_GCM_HKDF_1MB",
        keystore: KeystoreOpt = None,
        passphrase_file: PassFileOpt = None,
        primary_key_plaintext: PrimaryKeyPlaintextOpt = None,
        kms: BigdlKmsOpt = None,
        primary_key_file: PrimaryKeyFileOpt = None,
        insecure_allow_simple_kms: InsecureSimpleOpt = False,
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
        * `ppml encrypt ./out ./out-bigdl --mode aes/cbc/pkcs5padding --data-key bigdl-dk.json --primary-key-plaintext env:PK`
        """
        if data_key is None:
            raise UsageError("encrypt needs --data-key FILE", hint="create one with 'ppml keys data-key --out FILE'")
        if dst == STDIO:
            raise UsageError("encrypt writes to a file or folder, not to standard output",
                             hint="name the encrypted file, e.g. ppml encrypt - data.csv.ppml --data-key dk.json")
        if src == STDIO:
            _refuse_stdin_secrets(passphrase_file, primary_key_plaintext)
        fmt = get_format(mode or DEFAULT_FORMAT)
        ring = keyring(keystore, passphrase_file,
                       bigdl_backends(primary_key_plaintext, kms, primary_key_file, insecure_allow_simple_kms))
        record, key = ring.open_data_key_file(str(data_key))
        is_bigdl_key = all(w.kms in _BIGDL_KMS for w in record.envelope)
        if (fmt.name == "aes/cbc/pkcs5padding") != is_bigdl_key:
            raise UsageError(
                f"{data_key} is {'a BigDL' if is_bigdl_key else 'a ppml'} data key; mode {fmt.name} needs "
                f"{'a ppml' if is_bigdl_key else 'a BigDL'} one",
                hint="BigDL files use BigDL data keys: 'ppml keys data-key --primary-key-plaintext env:VAR'"
                if not is_bigdl_key else "use --mode aes/cbc/pkcs5padding, or a data key from 'ppml keys data-key'",
            )
        if segment not in SEGMENT_PRESETS:
            raise UsageError(f"unknown segment preset {segment!r}", hint="choose one of: " + ", ".join(SEGMENT_PRESETS))
        options = {"segment_size": SEGMENT_PRESETS[segment]} if fmt.name == "aes_gcm_stream" else {}
        if src == STDIO:
            with byte_progress("encrypting", None) as advance:
                report = files.encrypt_stream(sys.stdin.buffer, dst, key=key, envelope=record.envelope,
                                              mode=fmt.name, force=force, progress=advance, **options)
        else:
            with byte_progress("encrypting", _total(src)) as advance:
                report = files.encrypt(src, dst, key=key, envelope=record.envelope, mode=fmt.name, force=force,
                                       workers=workers, progress=advance, **options)
        if as_json:
            emit_json("encrypt", report.to_json())
        else:
            _summary(report, "Encrypted")

    @app.command()
    def decrypt(
        src: Annotated[str, typer.Argument(help="Encrypted file or folder.")],
        dst: Annotated[str, typer.Argument(help="Plaintext file or folder to create, or - for standard output.")],
        data_key: DataKeyOpt = None,
        mode: ModeOpt = None,
        keystore: KeystoreOpt = None,
        passphrase_file: PassFileOpt = None,
        primary_key_plaintext: PrimaryKeyPlaintextOpt = None,
        kms: BigdlKmsOpt = None,
        primary_key_file: PrimaryKeyFileOpt = None,
        insecure_allow_simple_kms: InsecureSimpleOpt = False,
        force: ForceOpt = False,
        workers: WorkersOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Decrypt a file or folder. Each file's header names its key and mode.

        Without --data-key the key is unwrapped from each file's header through the key store (or the
        BigDL options). Every byte is authenticated before it is written; a failed run leaves no output
        file. To standard output (-) the plaintext streams out segment by segment.

        **Examples**

        * `ppml decrypt orders.csv.ppml orders.csv`
        * `ppml decrypt ./tpch-enc ./tpch-plain --workers 4`
        * `ppml decrypt orders.csv.ppml - | head`: as a stream; the exit code says whether the whole file was
          authentic (bytes before a damaged segment are already out)
        * `ppml decrypt ./bigdl-out ./plain --primary-key-plaintext env:BIGDL_PRIMARY_KEY`
        """
        if src == STDIO:
            raise UsageError("decrypt reads a file or folder, not standard input",
                             hint="save the encrypted stream to a file first; decrypting to standard output works")
        if dst == STDIO and as_json:
            raise UsageError("--json cannot share standard output with the plaintext", hint="decrypt to a file")
        ring = keyring(keystore, passphrase_file,
                       bigdl_backends(primary_key_plaintext, kms, primary_key_file, insecure_allow_simple_kms))
        key = ring.open_data_key_file(str(data_key))[1] if data_key else None
        with byte_progress("decrypting", _total(src)) as advance:
            if dst == STDIO:
                report = files.decrypt_stream(src, sys.stdout.buffer, keyring=ring, key=key, mode=mode,
                                              progress=advance)
            else:
                report = files.decrypt(src, dst, keyring=ring, key=key, mode=mode, force=force, workers=workers,
                                       progress=advance)
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
    def verify(
        path: Annotated[str, typer.Argument(help="Encrypted file or folder.")],
        data_key: DataKeyOpt = None,
        mode: ModeOpt = None,
        keystore: KeystoreOpt = None,
        passphrase_file: PassFileOpt = None,
        primary_key_plaintext: PrimaryKeyPlaintextOpt = None,
        kms: BigdlKmsOpt = None,
        primary_key_file: PrimaryKeyFileOpt = None,
        insecure_allow_simple_kms: InsecureSimpleOpt = False,
        workers: WorkersOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Authenticate every segment of a file or of every file in a folder (exit 4 if any fails).

        **Example**: `ppml verify ./tpch-enc`
        """
        ring = keyring(keystore, passphrase_file,
                       bigdl_backends(primary_key_plaintext, kms, primary_key_file, insecure_allow_simple_kms))
        key = ring.open_data_key_file(str(data_key))[1] if data_key else None
        with byte_progress("verifying", _total(path)) as advance:
            report = files.verify(path, keyring=ring, key=key, mode=mode, workers=workers, progress=advance)
        bad = [d for d in report.details if not d["ok"]]
        if as_json:
            emit_json("verify", {**report.to_json(), "ok": not bad})
        else:
            for entry in bad:
                err.print(f"[red]FAILED[/] {entry['path']}: {entry['error']['message']}")
            err.print(f"{report.files - len(bad)} of {report.files} file(s) verified.")
        if bad:
            raise typer.Exit(IntegrityError.exit_code)

    @app.command()
    def rewrap(
        path: Annotated[str, typer.Argument(help="Folder (or file) with encrypted files and data-key files.")],
        key_name: KeyNameOpt = DEFAULT_KEY_NAME,
        remove: Annotated[Optional[list[str]], typer.Option(
            "--remove", help="Drop copies wrapped by this key (kms:key or kms:key#vN); repeatable.")] = None,
        keystore: KeystoreOpt = None,
        passphrase_file: PassFileOpt = None,
        kms_name: KmsOpt = None,
        vault: VaultOpt = None,
        client_id: ClientIdOpt = None,
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
        kms = primary_kms(kms_name, vault, client_id, keystore, passphrase_file)
        ring = keyring(keystore, passphrase_file, [kms])
        report = rotation.rewrap(path, keyring=ring, backend=kms, key_name=kms.key_identifier(key_name),
                                 remove=remove or [], workers=workers)
        usage = rotation.key_usage(rotation.scan(path))
        failed = [d for d in report.details if d["status"] == "failed"]
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
        if failed:
            raise typer.Exit(5)

    @app.command()
    def rekey(
        path: Annotated[str, typer.Argument(help="Folder (or file) of aes_gcm_stream files to re-encrypt.")],
        out_data_key: Annotated[Path, typer.Option("--out-data-key", help="Where to save the new data key.")],
        key_name: KeyNameOpt = DEFAULT_KEY_NAME,
        keystore: KeystoreOpt = None,
        passphrase_file: PassFileOpt = None,
        workers: WorkersOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Re-encrypt data under a new data key (each file replaced atomically; plaintext stays in memory).

        **Example**: `ppml rekey ./tpch-enc --out-data-key dk-2.json`
        """
        kms = local_kms(keystore, passphrase_file)
        ring = keyring(keystore, passphrase_file, [kms])
        new_key, wrapped = kms.generate_data_key(key_name)
        record = DataKeyFile.new(new_key.key_id, (wrapped,))
        record.save(out_data_key)  # saved before any file depends on it
        with byte_progress("re-encrypting", _total(path)) as advance:
            report = rotation.rekey(path, keyring=ring, key=new_key, envelope=record.envelope, workers=workers,
                                    progress=advance)
        failed = [d for d in report.details if d["status"] == "failed"]
        if as_json:
            emit_json("rekey", {**report.to_json(), "data_key": str(out_data_key), "key_id": record.key_id})
        else:
            for entry in failed:
                err.print(f"[red]failed[/] {entry['path']}: {entry['error']['message']}")
            _summary(report, "Re-encrypted")
            err.print(f"New data key {record.key_id} saved to {out_data_key}.")
        if failed:
            raise typer.Exit(5)
