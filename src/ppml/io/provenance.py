"""Signed provenance of results: which data-set versions went in, what ran, with which keys, in which TEE.

Every result ppml writes (a Spark output, a TPC-H query result) gets a record beside its manifest, in
``_ppml_provenance/v<version>.json`` for the data-set version it describes::

    {"schema": "ppml.provenance/1", "created": ISO 8601,
     "result": {"dataset": id, "version": n, "manifest_digest": sha256},
     "inputs": [{"path": url, "dataset": id, "version": n, "manifest_digest": sha256}   # a data set
                | {"path": url, "files": [{"path", "format", "file_id", "size"}]}],     # files without one
     "query": {"digest": sha256 of the optimized plan or code, "label": ...},
     "software": {"ppml": ..., "spark": ..., "python": ...},
     "key_ids": [public ids of the data keys used; never keys],
     "attestation": [{"process": ..., "evidence_type": ..., "evidence_digest": ..., "claims": {...}}],
     "signer": {"kind": "signing-key" | "data-key", "key_id": ..., "public_key": base64, "attested": bool},
     "signature": base64 Ed25519 over the canonical JSON of everything else}

The signing key is Ed25519, derived (HKDF-SHA256, info ``ppml/v1/provenance-signing``) from a 32-byte key
that reaches the writer the way data keys do: a *signing key* (a data-key file of its own, released by the
key broker only to attested workloads when its policy says so), or else the result's own data key (marked
``"kind": "data-key"``: it proves the record was written by a holder of the data key, which protects against
whoever can only write to storage, not against other readers of the data).
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ppml import __version__
from ppml.crypto.datakey import DataKey
from ppml.crypto.formats import get_format
from ppml.crypto.manifest import Manifest
from ppml.errors import CorruptHeaderError, IntegrityError, NotFoundError, UsageError
from ppml.io.datasets import MANIFEST_FOLDER, DataSetVersion, check_listing, check_member, latest_version
from ppml.io.files import describe
from ppml.io.storage import Location, locate
from ppml.keys.keyring import KeyRing

__all__ = ["SCHEMA", "FOLDER", "Signer", "public_key_of", "build_record", "write_record", "read_record",
           "check_signature", "load_public_key", "public_key_pem", "verify_provenance", "digest_of_text"]

SCHEMA = "ppml.provenance/1"
FOLDER = "_ppml_provenance"
_SIGNING_INFO = b"ppml/v1/provenance-signing"
MAX_RECORD_SIZE = 16 * 1024 * 1024


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _private_key(key: DataKey) -> Ed25519PrivateKey:
    seed = HKDF(hashes.SHA256(), 32, None, _SIGNING_INFO).derive(key.unsafe_material())
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_of(key: DataKey) -> bytes:
    """The raw Ed25519 public key that verifies records signed with ``key`` (safe to publish)."""
    return _private_key(key).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(key: DataKey) -> bytes:
    """:func:`public_key_of` as a PEM public key file's content."""
    public = Ed25519PublicKey.from_public_bytes(public_key_of(key))
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Signer:
    """The key that signs records: a signing key (``kind="signing-key"``) or the result's data key."""

    key: DataKey
    kind: str
    attested: bool

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "key_id": self.key.key_id, "attested": self.attested,
                "public_key": base64.b64encode(public_key_of(self.key)).decode()}


def build_record(result: DataSetVersion, *, inputs: Sequence[Mapping[str, Any]], query: Mapping[str, Any],
                 key_ids: Sequence[str], attestation: Sequence[Mapping[str, Any]], spark: str | None,
                 signer: Signer) -> bytes:
    """The signed record of how ``result`` was made."""
    document = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "result": {"dataset": result.manifest.dataset, "version": result.manifest.version,
                   "manifest_digest": result.digest},
        "inputs": [dict(i) for i in inputs],
        "query": dict(query),
        "software": {"ppml": __version__, "spark": spark, "python": platform.python_version()},
        "key_ids": sorted(set(key_ids)),
        "attestation": [dict(a) for a in attestation],
        "signer": signer.describe(),
    }
    document["signature"] = base64.b64encode(_private_key(signer.key).sign(_canonical(document))).decode()
    return _canonical(document) + b"\n"


def write_record(root: Location, version: int, data: bytes) -> Location:
    """Store the record of data-set version ``version`` of ``root`` (never replacing one)."""
    location = root.child(f"{FOLDER}/v{version:08d}.json")
    location.create(data)
    return location


def read_record(root: Location, version: int) -> tuple[dict[str, Any], Location]:
    """The record of version ``version`` of the data set in ``root`` (not yet checked)."""
    location = root.child(f"{FOLDER}/v{version:08d}.json")
    if not location.exists():
        raise NotFoundError(f"{root.url} has no provenance record for version {version}",
                            hint="results written by ppml carry one; this one was written by something else, "
                                 "or the record was deleted")
    with location.open("rb") as handle:
        data = handle.read(MAX_RECORD_SIZE + 1)
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        record = None
    if len(data) > MAX_RECORD_SIZE or not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise CorruptHeaderError(f"{location.url}: not a ppml provenance record", path=location.url)
    return record, location


def check_signature(record: Mapping[str, Any], *, trusted: bytes, where: str) -> None:
    """Raise :class:`~ppml.errors.IntegrityError` unless ``record`` is signed by the public key ``trusted``."""
    unsigned = {k: v for k, v in record.items() if k != "signature"}
    signer = record.get("signer")
    try:
        embedded = base64.b64decode(str(signer["public_key"]), validate=True)  # type: ignore[index]
        signature = base64.b64decode(str(record["signature"]), validate=True)
        if embedded != trusted:
            raise InvalidSignature
        Ed25519PublicKey.from_public_bytes(trusted).verify(signature, _canonical(unsigned))
    except (InvalidSignature, KeyError, TypeError, ValueError):
        raise IntegrityError(f"{where}: the provenance record is not signed by the expected key", path=where,
                             hint="the record was edited, or signed by someone else") from None


def load_public_key(data: bytes, *, name: str) -> bytes:
    """A raw Ed25519 public key from a PEM file's bytes."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise UsageError(f"{name} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{name} is not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def digest_of_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def verify_provenance(root: Location, keyring: KeyRing, *, trusted: bytes | None = None) -> dict[str, Any]:
    """Check the record of the latest version of the data set in ``root``: its signature, that it describes
    that version's manifest, and that every input it names still has the version (or the files) it read,
    unchanged (an input that has moved on to a later version says so in ``current_version``).

    ``trusted`` is the signer's public key; without it, a record signed with the result's data key is checked
    against that key (unwrapped through ``keyring``), and one signed with a signing key is refused.
    Returns what was checked; raises :class:`~ppml.errors.IntegrityError` naming the first thing that differs.
    """
    latest = latest_version(root, keyring)
    if latest is None:
        raise IntegrityError(f"{root.url} has no data-set manifest, so no provenance to check", path=root.url)
    version = _described_version(root, latest, keyring)
    record, location = read_record(root, version.manifest.version)
    signer = record.get("signer") if isinstance(record.get("signer"), dict) else {}
    if trusted is None:
        if signer.get("kind") != "data-key":
            raise UsageError(f"{location.url} is signed by signing key {signer.get('key_id')}: give its public key",
                             hint="ppml provenance verify RESULT --signer SIGNER.pub.pem (or the signing-key file)")
        key = keyring.unwrap(version.manifest.envelope, name=version.location.url, key_id=version.manifest.key_id)
        if key.key_id != signer.get("key_id"):
            raise IntegrityError(f"{location.url}: signed with data key {signer.get('key_id')}, not with the "
                                 f"result's data key {key.key_id}", path=location.url)
        trusted = public_key_of(key)
    check_signature(record, trusted=trusted, where=location.url)
    described = record.get("result") or {}
    if (described.get("dataset"), described.get("version"), described.get("manifest_digest")) != (
            version.manifest.dataset, version.manifest.version, version.digest):
        raise IntegrityError(f"{location.url}: describes another version of the result than its manifest "
                             f"(version {described.get('version')}, not {version.manifest.version})", path=root.url)
    inputs = [_check_input(entry, keyring, where=location.url) for entry in record.get("inputs") or []]
    return {"result": described, "signer": signer, "inputs": inputs, "record": location.url,
            "rewrapped_since": latest.manifest.version != version.manifest.version}


def _described_version(root: Location, latest: DataSetVersion, keyring: KeyRing) -> DataSetVersion:
    """The version whose record describes ``latest``: itself, or the version before re-wrapping.

    ``ppml rewrap`` writes a new version whose members are the same files (same ids) under re-wrapped keys;
    the job's record still describes them. Any other later version (new data, or data re-encrypted by
    ``ppml rekey``) has no record of how it was made.
    """
    current = latest
    while not root.child(f"{FOLDER}/v{current.manifest.version:08d}.json").exists():
        previous_number = current.manifest.version - 1
        if current.manifest.writer != "ppml rewrap" or previous_number < 1:
            raise NotFoundError(f"{root.url} has no provenance record for version {current.manifest.version} "
                                f"(written by {current.manifest.writer})",
                                hint="a result re-keyed or changed after its job has no record of how it was made")
        older = root.child(f"{MANIFEST_FOLDER}/v{previous_number:08d}.json")
        with older.open("rb") as handle:
            data = handle.read()
        manifest, mac = Manifest.parse(data, name=older.url)
        digest = hashlib.sha256(data).hexdigest()
        manifest.authenticate(mac, keyring.unwrap(manifest.envelope, name=older.url, key_id=manifest.key_id),
                              name=older.url)
        same_files = {(m.path, m.file_id) for m in manifest.members} == {
            (m.path, m.file_id) for m in current.manifest.members}
        if current.manifest.previous != digest or not same_files:
            raise IntegrityError(f"{root.url}: version {current.manifest.version} does not re-wrap version "
                                 f"{manifest.version}", path=root.url)
        current = DataSetVersion(manifest, digest, older)
    return current


def _check_input(entry: Mapping[str, Any], keyring: KeyRing, *, where: str) -> dict[str, Any]:
    if "dataset" not in entry and "files" not in entry:
        return {"source": entry.get("source"), "ok": None}  # not read through ppml: nothing to check
    if "dataset" in entry:
        source = locate(str(entry.get("path")))
        manifest = source.child(f"{MANIFEST_FOLDER}/v{int(entry['version']):08d}.json")
        if not manifest.exists():
            raise IntegrityError(f"{where}: input {source.url} no longer has version {entry['version']}",
                                 path=source.url)
        with manifest.open("rb") as handle:
            data = handle.read()
        if hashlib.sha256(data).hexdigest() != entry.get("manifest_digest"):
            raise IntegrityError(f"{where}: the manifest of input {source.url} version {entry['version']} is not "
                                 "the one that was read", path=manifest.url)
        parsed, mac = Manifest.parse(data, name=manifest.url)
        parsed.authenticate(mac, keyring.unwrap(parsed.envelope, name=manifest.url, key_id=parsed.key_id),
                            name=manifest.url)
        current = latest_version(source, keyring)
        if current is not None and current.manifest.version == parsed.version:
            # Still the version that was read: its files must still be the ones it records.
            check_listing(source, current, dict(source.files()))
            for recorded in parsed.members:
                location = source.child(recorded.path)
                fmt = get_format(recorded.format)
                check_member(recorded, fmt, describe(location, fmt), name=location.url)
        return {"path": source.url, "dataset": parsed.dataset, "version": parsed.version, "ok": True,
                "current_version": current.manifest.version if current is not None else None}
    for recorded in entry.get("files") or []:
        location = locate(str(recorded["path"]))
        fmt = get_format(recorded["format"])
        info = describe(location, fmt)
        if fmt.identity(info) != recorded["file_id"] or int(info.facts["size"]) != recorded["size"]:
            raise IntegrityError(f"{where}: input file {location.url} is not the one that was read", path=location.url)
    return {"path": entry.get("path"), "files": len(entry.get("files") or []), "ok": True}
