"""Key rotation over trees: which key versions files use, re-wrapping envelopes, re-keying data.

Three operations that never overlap:

* :func:`rewrap` re-wraps the data keys found in file headers (of every format that can re-wrap them),
  data-key files and data-set manifests with the current version of a primary key. Plaintext data is never
  produced and no body byte changes; the header's envelope is rewritten in place when it fits.
* :func:`rekey` encrypts data again under a new data key (plaintext only ever in memory), in each file's
  own format and layout.
* :func:`key_usage` counts the files that still use each primary-key version, so a version still in
  use is never retired.

A data set (a folder with a manifest) is checked against its manifest before either operation touches it,
and gets a new manifest version afterwards: rotation never blesses a changed folder.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import SNIFF_SIZE, FileFormat, detect_format, get_format
from ppml.crypto.manifest import SCHEMA as MANIFEST_SCHEMA
from ppml.crypto.manifest import Manifest, Member
from ppml.errors import PpmlError
from ppml.io.batch import Progress, Report, copy_stream, run_tasks
from ppml.io.datasets import MANIFEST_FOLDER, check_member, latest_version, member, write_version
from ppml.io.files import checked_members, describe
from ppml.io.storage import Location, locate, staged_output
from ppml.keys import datakey_file
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.keyring import KeyRing
from ppml.keys.kms import KeyManagementService, data_key_kind

__all__ = ["KeyedFile", "scan", "key_usage", "rewrap", "rekey"]

DATA_KEY_FILE = "data-key"
MANIFEST = "manifest"


@dataclass(frozen=True)
class KeyedFile:
    """A file that carries wrapped keys: an encrypted data file, a data-key file or a data-set manifest."""

    location: Location
    kind: str  # DATA_KEY_FILE, MANIFEST, or the name of the file's format
    envelope: tuple[WrappedKey, ...]
    rewrappable: bool

    @property
    def format(self) -> FileFormat:
        return get_format(self.kind)

    @property
    def dataset_root(self) -> Location:
        """For a manifest: the folder of its data set."""
        return self.location.at(posixpath.dirname(posixpath.dirname(self.location.path)))


def _classify(location: Location) -> KeyedFile | None:
    with location.open("rb", header_only=True) as raw:
        head = raw.read(SNIFF_SIZE)
        if head.lstrip()[:1] == b"{" and location.size() <= datakey_file.MAX_SIZE:
            raw.seek(0)
            data = raw.read()
            if datakey_file.SCHEMA.encode() in data:
                record = DataKeyFile.parse(data, name=location.url)
                return KeyedFile(location, DATA_KEY_FILE, record.envelope, True)
            if MANIFEST_SCHEMA.encode() in data and posixpath.basename(posixpath.dirname(location.path)) == MANIFEST_FOLDER:
                manifest, _ = Manifest.parse(data, name=location.url)
                return KeyedFile(location, MANIFEST, manifest.envelope, True)
            return None
        fmt = detect_format(head, location.path)
        if not fmt.encrypted:
            return None
        info = fmt.describe(raw, name=location.url)
        return KeyedFile(location, fmt.name, info.envelope, fmt.rewrappable)


def scan(path: str) -> list[KeyedFile]:
    """Every file below ``path`` (hidden ones included) that carries wrapped keys.

    Of each data set's manifests only the latest version counts: older ones are its history.
    """
    root = locate(path)
    relatives = [relative for relative, _ in root.files(include_hidden=True)]
    latest: dict[str, str] = {}
    for relative in relatives:
        folder, name = posixpath.split(relative)
        if posixpath.basename(folder) == MANIFEST_FOLDER and name > latest.get(folder, ""):
            latest[folder] = name
    found = []
    for relative in relatives:
        folder, name = posixpath.split(relative)
        if posixpath.basename(folder) == MANIFEST_FOLDER and latest[folder] != name:
            continue
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
    identifier = backend.key_identifier(key_name)
    kept = [w for w in old if not (w.kms == backend.name and backend.canonical_key(w.key) == identifier)
            and f"{w.kms}:{w.key}" not in remove and w.reference not in remove]
    return (*kept, backend.wrap(key, key_name))


def _rewrite_header(location: Location, fmt: FileFormat, envelope: Sequence[WrappedKey]) -> None:
    if location.is_local:
        with open(location.path, "r+b") as raw:
            if fmt.replace_envelope(raw, envelope, name=location.url):
                return
    # Does not fit (or remote storage): write a new header and copy the unchanged body.
    with location.open("rb") as src:
        header, body_offset = fmt.rewrapped_header(src, envelope, name=location.url)
        with staged_output(location, force=True) as staging, staging.open("wb") as dst:
            dst.write(header)
            src.seek(body_offset)
            copy_stream(src, dst)


def _save_data_key(location: Location, record: DataKeyFile) -> None:
    if location.is_local:
        record.save(location.path, replace=True)
        return
    # Object stores have no file modes: access is the container's (and the key stays wrapped anyway).
    with staged_output(location, force=True) as staging, staging.open("wb") as out:
        out.write((json.dumps(record.to_json(), indent=2) + "\n").encode())


class _DataSets:
    """The data sets below a path: checked against their manifests first, given a new version afterwards."""

    def __init__(self, files: Sequence[KeyedFile], keyring: KeyRing) -> None:
        self.keyring = keyring
        self.manifests = [k for k in files if k.kind == MANIFEST]
        self.refused: dict[str, PpmlError] = {}  # data-set root path -> why it is left alone
        for keyed in self.manifests:
            root = keyed.dataset_root
            try:
                checked_members(root, root.files(), keyring=keyring, key=None, mode=None)
            except PpmlError as exc:
                self.refused[root.path] = exc

    def refusal(self, keyed: KeyedFile) -> PpmlError | None:
        """Why a data file may not be touched (its data set failed its check), or ``None``."""
        for root, error in self.refused.items():
            if keyed.location.path.startswith(root.rstrip("/") + "/"):
                return error
        return None

    def renew(self, writer: str, key_for: Callable[[Manifest], tuple[DataKey, tuple[WrappedKey, ...]]],
              *, same_files: bool) -> list[dict[str, object]]:
        """Write the next version of every data set that was not refused, from its members as they are now.

        ``same_files``: the members must still be the recorded files (re-wrapping); otherwise (re-keying) they
        are the files now at the recorded paths.
        """
        results = []
        for keyed in self.manifests:
            root = keyed.dataset_root
            entry: dict[str, object] = {"path": keyed.location.url, "kind": MANIFEST}
            if root.path in self.refused:
                results.append({**entry, "status": "failed", "error": self.refused[root.path].to_dict()})
                continue
            try:
                current = latest_version(root, self.keyring)
                assert current is not None
                members = [self._now(root, m, same_files) for m in current.manifest.members]
                key, envelope = key_for(current.manifest)
                written = write_version(root, members, key=key, envelope=envelope, writer=writer, previous=current)
                results.append({**entry, "status": "rewritten", "version": written.manifest.version,
                                "keys": [w.reference for w in envelope]})
            except PpmlError as exc:
                results.append({**entry, "status": "failed", "error": exc.to_dict()})
        return results

    @staticmethod
    def _now(root: Location, recorded: Member, same_files: bool) -> Member:
        location = root.child(recorded.path)
        fmt = get_format(recorded.format)
        info = describe(location, fmt)
        if same_files:
            check_member(recorded, fmt, info, name=location.url)
        return member(recorded.path, fmt, info, int(info.facts["size"]))


def _refused(keyed: KeyedFile, sets: _DataSets) -> dict[str, object] | None:
    error = sets.refusal(keyed)
    if error is None:
        return None
    return {"path": keyed.location.url, "kind": keyed.kind, "status": "failed", "error": error.to_dict()}


def rewrap(path: str, *, keyring: KeyRing, backend: KeyManagementService, key_name: str,
           remove: Sequence[str] = (), workers: int | None = None, progress: Progress | None = None) -> Report:
    """Re-wrap every data key below ``path`` with the current version of ``backend``'s ``key_name``.

    Copies wrapped by other primary keys are kept unless named in ``remove`` (``kms:key`` or
    ``kms:key#vN``). Files whose format cannot re-wrap its header (BigDL's) are reported, not changed.
    ``Report.details`` lists each file; :func:`key_usage` counts the files per key version afterwards.
    """
    started = time.perf_counter()
    files = scan(path)
    sets = _DataSets(files, keyring)
    report = Report("rewrap", f"{backend.name}:{backend.key_identifier(key_name)}")

    def task(keyed: KeyedFile) -> Callable[[], dict[str, object]]:
        def run() -> dict[str, object]:
            entry: dict[str, object] = {"path": keyed.location.url, "kind": keyed.kind}
            try:
                if (refused := _refused(keyed, sets)) is not None:
                    return refused
                if not keyed.rewrappable:
                    return {**entry, "status": "skipped", "reason": f"{keyed.kind} headers cannot be re-wrapped"}
                if keyed.kind == DATA_KEY_FILE:
                    with keyed.location.errors():
                        data = keyed.location.fs.cat_file(keyed.location.path)
                    record = DataKeyFile.parse(data, name=keyed.location.url)
                    key = keyring.unwrap(record.envelope, name=keyed.location.url, key_id=record.key_id)
                    envelope = _new_envelope(record.envelope, key, backend, key_name, remove)
                    _save_data_key(keyed.location, record.with_envelope(envelope))
                else:
                    key = keyring.unwrap(keyed.envelope, name=keyed.location.url)
                    with keyed.location.open("rb") as raw:  # prove the key is this file's before rewriting
                        keyed.format.open_reader(raw, key, name=keyed.location.url).close()
                    envelope = _new_envelope(keyed.envelope, key, backend, key_name, remove)
                    _rewrite_header(keyed.location, keyed.format, envelope)
                return {**entry, "status": "rewrapped", "keys": [w.reference for w in envelope]}
            except PpmlError as exc:
                return {**entry, "status": "failed", "error": exc.to_dict()}
            finally:
                if progress:
                    progress(1)
        return run

    def rewrapped_key(manifest: Manifest) -> tuple[DataKey, tuple[WrappedKey, ...]]:
        key = keyring.unwrap(manifest.envelope, name=manifest.dataset, key_id=manifest.key_id)
        return key, _new_envelope(manifest.envelope, key, backend, key_name, remove)

    report.details = run_tasks([task(k) for k in files if k.kind != MANIFEST], workers)
    report.details += [{**d, "status": "rewrapped" if d["status"] == "rewritten" else d["status"]}
                       for d in sets.renew("ppml rewrap", rewrapped_key, same_files=True)]
    return report.finish(started, status="rewrapped")


def rekey(path: str, *, keyring: KeyRing, key: DataKey, envelope: Sequence[WrappedKey],
          workers: int | None = None, progress: Progress | None = None) -> Report:
    """Encrypt every file below ``path`` again under the new data key ``key``, each in its own format and layout.

    Files whose format takes another kind of data key than ``envelope`` holds (BigDL files, for a ppml key)
    are reported as skipped. Each file is replaced atomically; plaintext exists only in memory. Save
    ``key``'s data-key file before calling this, so no file ever depends on a key that is not stored.
    """
    started = time.perf_counter()
    kind = data_key_kind(envelope)
    files = scan(path)
    sets = _DataSets(files, keyring)
    report = Report("rekey", kind)

    def task(keyed: KeyedFile) -> Callable[[], dict[str, object]]:
        def run() -> dict[str, object]:
            location, fmt = keyed.location, keyed.format
            if (refused := _refused(keyed, sets)) is not None:
                return refused
            if fmt.data_key_kind != kind:
                return {"path": location.url, "status": "skipped",
                        "reason": f"{fmt.name} files take {fmt.data_key_kind} data keys, not {kind} ones"}
            try:
                old_key = keyring.unwrap(keyed.envelope, name=location.url)
                with location.open("rb") as raw:
                    options = fmt.layout_options(fmt.describe(raw, name=location.url))
                    with fmt.open_reader(raw, old_key, name=location.url) as reader, \
                            staged_output(location, force=True) as staging, staging.open("wb") as out, \
                            fmt.open_writer(out, key, envelope, name=location.url, **options) as writer:
                        size = copy_stream(reader, writer, progress)
                return {"path": location.url, "status": "rekeyed", "bytes": size}
            except PpmlError as exc:
                return {"path": location.url, "status": "failed", "error": exc.to_dict()}
        return run

    data_files = [k for k in files if k.kind not in (DATA_KEY_FILE, MANIFEST)]
    report.details = run_tasks([task(k) for k in data_files], workers)
    _refresh_sidecars([k for k, d in zip(data_files, report.details) if d["status"] == "rekeyed"], envelope)
    report.details += sets.renew("ppml rekey", lambda manifest: (key, tuple(envelope)), same_files=False)
    return report.finish(started, status="rekeyed")


def _refresh_sidecars(rekeyed: Sequence[KeyedFile], envelope: Sequence[WrappedKey]) -> None:
    """Folders whose format names the data key beside the files (BigDL's ``.meta``) now name the new one."""
    folders = {(k.location.sibling("").path, k.kind): k.location for k in rekeyed}
    for (_, kind), member_location in folders.items():
        for name, data in get_format(kind).sidecars(envelope).items():
            with staged_output(member_location.sibling(name), force=True) as staging, staging.open("wb") as out:
                out.write(data)
