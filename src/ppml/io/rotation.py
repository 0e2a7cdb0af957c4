"""Key rotation over trees: which key versions files use, re-wrapping envelopes, re-keying data.

Three operations that never overlap:

* :func:`rewrap` re-wraps the data keys found in ``aes_gcm_stream`` headers and data-key files with the
  current version of a primary key. Plaintext data is never produced and no body byte changes; the
  header's envelope is rewritten in place when it fits its area.
* :func:`rekey` encrypts data again under a new data key (plaintext only ever in memory).
* :func:`key_usage` counts the files that still use each primary-key version, so a version still in
  use is never retired.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ppml.crypto import gcm_stream
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import SNIFF_SIZE, detect_format, get_format
from ppml.errors import PpmlError
from ppml.io.files import Report, _copy, _run, default_workers
from ppml.io.storage import Location, locate, staged_output
from ppml.keys import datakey_file
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.keyring import KeyRing
from ppml.keys.kms import KeyManagementService

__all__ = ["KeyedFile", "scan", "key_usage", "rewrap", "rekey"]

Progress = Callable[[int], None]


@dataclass(frozen=True)
class KeyedFile:
    """A file that carries wrapped keys: an encrypted data file or a data-key file."""

    location: Location
    kind: str  # "aes_gcm_stream" | "data-key" | another format's name
    envelope: tuple[WrappedKey, ...]
    rewrappable: bool


def _classify(location: Location) -> KeyedFile | None:
    with location.open("rb", header_only=True) as raw:
        head = raw.read(SNIFF_SIZE)
        if head.lstrip()[:1] == b"{" and location.size() <= datakey_file.MAX_SIZE:
            raw.seek(0)
            data = raw.read()
            if datakey_file.SCHEMA.encode() in data:
                record = DataKeyFile.parse(data, name=location.url)
                return KeyedFile(location, "data-key", record.envelope, True)
            return None
        fmt = detect_format(head, location.path)
        if not fmt.encrypted:
            return None
        info = fmt.describe(raw, name=location.url)
        return KeyedFile(location, fmt.name, info.envelope, fmt.name == "aes_gcm_stream")


def scan(path: str) -> list[KeyedFile]:
    """Every file below ``path`` (hidden ones included) that carries wrapped keys."""
    root = locate(path)
    found = []
    for relative, _ in root.files(include_hidden=True):
        keyed = _classify(root.child(relative) if relative else root)
        if keyed is not None:
            found.append(keyed)
    return found


def key_usage(files: Sequence[KeyedFile]) -> Counter[str]:
    """Number of files using each primary-key version (``kms:key#vN``)."""
    usage: Counter[str] = Counter()
    for keyed in files:
        for reference in {w.reference for w in keyed.envelope}:
            usage[reference] += 1
    return usage


def _new_envelope(old: Sequence[WrappedKey], key: DataKey, backend: KeyManagementService, key_name: str,
                  remove: Sequence[str]) -> tuple[WrappedKey, ...]:
    kept = [w for w in old if not (w.kms == backend.name and w.key == key_name)
            and f"{w.kms}:{w.key}" not in remove and w.reference not in remove]
    return (*kept, backend.wrap(key, key_name))


def _rewrite_header(location: Location, envelope: Sequence[WrappedKey]) -> None:
    with location.open("rb") as raw:
        header = gcm_stream.read_header(raw, name=location.url)
    if location.is_local:
        with open(location.path, "r+b") as raw:
            if gcm_stream.replace_envelope(raw, header, envelope):
                return
    # Does not fit (or remote storage): write a new header and copy the unchanged body.
    with staged_output(location, force=True) as staging, location.open("rb") as src, staging.open("wb") as dst:
        dst.write(gcm_stream.encode_header(header.authenticated, envelope))
        src.seek(header.body_offset)
        _copy(src, dst, None)


def _save_data_key(location: Location, record: DataKeyFile) -> None:
    if location.is_local:
        record.save(location.path, replace=True)
        return
    # Object stores have no file modes: access is the container's (and the key stays wrapped anyway).
    with staged_output(location, force=True) as staging, staging.open("wb") as out:
        out.write((json.dumps(record.to_json(), indent=2) + "\n").encode())


def rewrap(path: str, *, keyring: KeyRing, backend: KeyManagementService, key_name: str,
           remove: Sequence[str] = (), workers: int | None = None, progress: Progress | None = None) -> Report:
    """Re-wrap every data key below ``path`` with the current version of ``backend``'s ``key_name``.

    Copies wrapped by other primary keys are kept unless named in ``remove`` (``kms:key`` or
    ``kms:key#vN``). Files whose format has no re-wrappable envelope (BigDL's) are reported, not changed.
    ``Report.details`` lists each file; :func:`key_usage` counts the files per key version afterwards.
    """
    started = time.perf_counter()
    files = scan(path)
    report = Report("rewrap", f"{backend.name}:{key_name}")

    def task(keyed: KeyedFile) -> Callable[[], dict[str, object]]:
        def run() -> dict[str, object]:
            entry: dict[str, object] = {"path": keyed.location.url, "kind": keyed.kind}
            try:
                if not keyed.rewrappable:
                    return {**entry, "status": "skipped", "reason": f"{keyed.kind} headers cannot be re-wrapped"}
                if keyed.kind == "data-key":
                    with keyed.location.errors():
                        data = keyed.location.fs.cat_file(keyed.location.path)
                    record = DataKeyFile.parse(data, name=keyed.location.url)
                    key = keyring.unwrap(record.envelope, name=keyed.location.url, key_id=record.key_id)
                    envelope = _new_envelope(record.envelope, key, backend, key_name, remove)
                    _save_data_key(keyed.location, record.with_envelope(envelope))
                else:
                    key = keyring.unwrap(keyed.envelope, name=keyed.location.url)
                    with keyed.location.open("rb") as raw:  # prove the key is this file's before rewriting
                        gcm_stream.DecryptingReader(raw, key, name=keyed.location.url)
                    envelope = _new_envelope(keyed.envelope, key, backend, key_name, remove)
                    _rewrite_header(keyed.location, envelope)
                return {**entry, "status": "rewrapped", "keys": [w.reference for w in envelope]}
            except PpmlError as exc:
                return {**entry, "status": "failed", "error": exc.to_dict()}
            finally:
                if progress:
                    progress(1)
        return run

    report.details = _run([task(k) for k in files], workers)
    report.files = sum(1 for d in report.details if d["status"] == "rewrapped")
    report.seconds = time.perf_counter() - started
    return report


def rekey(path: str, *, keyring: KeyRing, key: DataKey, envelope: Sequence[WrappedKey],
          workers: int | None = None, progress: Progress | None = None) -> Report:
    """Encrypt every ``aes_gcm_stream`` file below ``path`` again under the new data key ``key``.

    Each file is replaced atomically; plaintext exists only in memory. Save ``key``'s data-key file
    before calling this, so no file ever depends on a key that is not stored.
    """
    started = time.perf_counter()
    fmt = get_format("aes_gcm_stream")
    files = [k for k in scan(path) if k.kind == fmt.name]
    report = Report("rekey", fmt.name)

    def task(keyed: KeyedFile) -> Callable[[], dict[str, object]]:
        def run() -> dict[str, object]:
            location = keyed.location
            try:
                old_key = keyring.unwrap(keyed.envelope, name=location.url)
                with location.open("rb") as raw:
                    segment_size = gcm_stream.read_header(raw, name=location.url).segment_size
                    reader = gcm_stream.DecryptingReader(raw, old_key, name=location.url)
                    with staged_output(location, force=True) as staging, staging.open("wb") as out, \
                            gcm_stream.EncryptingWriter(out, key, envelope, segment_size=segment_size) as writer:
                        size = _copy(reader, writer, progress)
                return {"path": location.url, "status": "rekeyed", "bytes": size}
            except PpmlError as exc:
                return {"path": location.url, "status": "failed", "error": exc.to_dict()}
        return run

    report.details = _run([task(k) for k in files], workers or default_workers())
    report.files = sum(1 for d in report.details if d["status"] == "rekeyed")
    report.bytes = sum(int(d.get("bytes", 0)) for d in report.details)
    report.seconds = time.perf_counter() - started
    return report
