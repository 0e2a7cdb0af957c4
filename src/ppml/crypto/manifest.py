"""The data-set manifest: which files make up one version of an encrypted data set, authenticated.

A data set is a folder of encrypted files (a Spark output, an encrypted tree, a TPC-H table folder). Each
file authenticates itself; the manifest authenticates the set: its id, its version, and for every member
the relative path, format, file identity and size. A member that is missing, added, renamed, duplicated or
replaced (even by another valid file under the same data key) no longer matches.

Wire format (UTF-8 JSON, keys sorted, no spaces; ``mac`` last)::

    {"schema": "ppml.manifest/1", "dataset": <32 hex>, "version": <int >= 1>,
     "previous": <SHA-256 hex of the previous version's bytes, or null>, "created": <ISO 8601 UTC>,
     "writer": <what wrote it>, "key_id": <public id of the data key>, "envelope": [<wrapped key>, ...],
     "members": [{"path": ..., "format": ..., "file_id": <hex>, "size": <bytes>}, ...],   sorted by path
     "mac": <hex>}

``mac`` = HMAC-SHA256(K, the document's bytes without ``mac``), with K = HKDF-SHA256(ikm = the data key,
salt = the data-set id, info = ``ppml/v1/manifest-mac``): only holders of the data key can write or check
a manifest, as for the files. The envelope carries wrapped copies of that key (never the key), so a reader
unwraps it like a file header's. This module knows no storage and no key management.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import CorruptHeaderError, IntegrityError

__all__ = ["Member", "Manifest", "SCHEMA", "MAX_MANIFEST_SIZE", "new_dataset_id"]

SCHEMA = "ppml.manifest/1"
MAX_MANIFEST_SIZE = 64 * 1024 * 1024
_MAC_INFO = b"ppml/v1/manifest-mac"
_HEX = re.compile(r"^[0-9a-f]+$")
_FIELDS = {"schema", "dataset", "version", "previous", "created", "writer", "key_id", "envelope", "members", "mac"}


def new_dataset_id() -> str:
    return os.urandom(16).hex()


def _canonical(document: Mapping[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac_key(key: DataKey, dataset: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, bytes.fromhex(dataset), _MAC_INFO).derive(key.unsafe_material())


@dataclass(frozen=True)
class Member:
    """One file of a data set: where it is (relative path), what it is, and which file exactly."""

    path: str
    format: str
    file_id: str
    size: int

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "format": self.format, "file_id": self.file_id, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """One version of a data set. Build with :meth:`new` / :meth:`next`, write with :meth:`seal`, read with
    :meth:`parse` then :meth:`authenticate`."""

    dataset: str
    version: int
    previous: str | None
    members: tuple[Member, ...]
    key_id: str
    envelope: tuple[WrappedKey, ...] = field(repr=False)
    created: str = ""
    writer: str = ""

    @classmethod
    def new(cls, members: Sequence[Member], *, key_id: str, envelope: Sequence[WrappedKey], writer: str,
            dataset: str | None = None) -> Manifest:
        """Version 1 of a new data set."""
        return cls(dataset or new_dataset_id(), 1, None, _sorted(members), key_id, tuple(envelope), writer=writer)

    def next(self, members: Sequence[Member], *, key_id: str, envelope: Sequence[WrappedKey], writer: str,
             previous_digest: str) -> Manifest:
        """The following version of this data set, holding ``members``."""
        return replace(self, version=self.version + 1, previous=previous_digest, members=_sorted(members),
                       key_id=key_id, envelope=tuple(envelope), writer=writer, created="")

    def _document(self) -> dict[str, object]:
        return {"schema": SCHEMA, "dataset": self.dataset, "version": self.version, "previous": self.previous,
                "created": self.created, "writer": self.writer, "key_id": self.key_id,
                "envelope": [w.to_json() for w in self.envelope], "members": [m.to_json() for m in self.members]}

    def seal(self, key: DataKey) -> bytes:
        """The manifest's bytes, authenticated with ``key`` (which must be the key ``key_id`` names)."""
        if key.key_id != self.key_id:
            raise ValueError("the manifest must be sealed with the data key it names")
        created = self.created or datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        document = {**replace(self, created=created)._document()}
        document["mac"] = hmac.new(_mac_key(key, self.dataset), _canonical(document), hashlib.sha256).hexdigest()
        return _canonical(document) + b"\n"

    @classmethod
    def parse(cls, data: bytes, *, name: str) -> tuple[Manifest, str]:
        """The manifest in ``data`` (not yet authenticated) and its MAC; raises when it is not a manifest."""

        def corrupt(what: str) -> CorruptHeaderError:
            return CorruptHeaderError(f"{name}: not a valid data-set manifest ({what})", path=name,
                                      hint="it was damaged or is not a ppml manifest; restore the data set from a "
                                           "trusted copy")

        if len(data) > MAX_MANIFEST_SIZE:
            raise corrupt(f"larger than {MAX_MANIFEST_SIZE} bytes")
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise corrupt("not JSON") from None
        if not isinstance(document, dict) or set(document) != _FIELDS or document["schema"] != SCHEMA:
            raise corrupt(f"fields or schema are not those of {SCHEMA}")
        try:
            members = tuple(Member(str(m["path"]), str(m["format"]), str(m["file_id"]), int(m["size"]))
                            for m in document["members"])
            manifest = cls(str(document["dataset"]), int(document["version"]), document["previous"], members,
                           str(document["key_id"]), tuple(WrappedKey.from_json(w) for w in document["envelope"]),
                           str(document["created"]), str(document["writer"]))
            mac = str(document["mac"])
        except (KeyError, TypeError, ValueError) as exc:
            raise corrupt(f"a field has the wrong type: {type(exc).__name__}") from None
        checks = (len(manifest.dataset) == 32 and _HEX.match(manifest.dataset), manifest.version >= 1,
                  all(_relative(m.path) for m in members),
                  manifest.previous is None or (isinstance(manifest.previous, str) and _HEX.match(manifest.previous)),
                  len(mac) == 64 and _HEX.match(mac), list(members) == list(_sorted(members)))
        if not all(checks):
            raise corrupt("a field is out of range")
        return manifest, mac

    def authenticate(self, mac: str, key: DataKey, *, name: str) -> None:
        """Raise :class:`~ppml.errors.IntegrityError` unless ``mac`` is this manifest's under ``key``."""
        expected = json.loads(self.seal(key))["mac"] if key.key_id == self.key_id else ""
        if not expected or not hmac.compare_digest(expected, mac):
            raise IntegrityError(f"{name}: the data-set manifest failed authentication", path=name,
                                 hint="it was edited, or assembled from another data set; restore the data set from "
                                      "a trusted copy")


def _relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and "" not in parts and ".." not in parts and "." not in parts


def _sorted(members: Sequence[Member]) -> tuple[Member, ...]:
    return tuple(sorted(members, key=lambda m: m.path))
