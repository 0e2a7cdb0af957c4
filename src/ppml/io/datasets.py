"""Data sets on storage: their authenticated manifests (see :mod:`ppml.crypto.manifest`), written and checked.

A data set's manifests live in its folder under ``_ppml_manifest/``, one file per version
(``v00000001.json``, ``v00000002.json``, ...), each created only if absent, so two writers can never both
write version N: the second one sees it exists and builds on it instead. The latest version is the one with
the highest number; its file name must match the version it states.

What is and is not detected (the threat model says the same):

* a member missing, added, renamed, duplicated, truncated or replaced (even by another valid file under the
  same data key): detected, naming the member;
* a plaintext file put among encrypted members: detected (it is not a member);
* an edited or forged manifest, or one copied from another data set: detected (its MAC needs the data key);
* the whole data set rolled back to an older version (its newest manifests deleted and old members put
  back): *not* detected by a reader on its own; a reader that knows the version to expect (from a provenance
  record, or ``min_version``) detects it;
* the manifest folder deleted: the data set then reads as one without a manifest, with a warning, unless the
  reader requires a manifest.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import FileFormat, FileInfo
from ppml.crypto.manifest import Manifest, Member
from ppml.errors import IntegrityError
from ppml.io.storage import Location
from ppml.keys.keyring import KeyRing

__all__ = ["MANIFEST_FOLDER", "DataSetVersion", "dataset_roots", "latest_version", "write_version", "member", "check_listing",
           "check_member", "dataset_facts", "UNPROTECTED_WARNING"]

MANIFEST_FOLDER = "_ppml_manifest"
_VERSION_FILE = re.compile(r"^v(\d{8})\.json$")
_MAX_LISTED = 10
UNPROTECTED_WARNING = ("{url} has no data-set manifest: each file is authenticated, but files deleted, added, "
                       "renamed or replaced by other valid files cannot be detected")


@dataclass(frozen=True)
class DataSetVersion:
    """An authenticated manifest, the SHA-256 of its bytes and where it is."""

    manifest: Manifest
    digest: str
    location: Location

    def members(self) -> dict[str, Member]:
        return {m.path: m for m in self.manifest.members}


def _versions(root: Location) -> dict[int, Location]:
    folder = root.child(MANIFEST_FOLDER)
    if not folder.exists():
        return {}
    found = {}
    for relative, _ in folder.files(include_hidden=True):
        match = _VERSION_FILE.match(relative)
        if match:
            found[int(match.group(1))] = folder.child(relative)
    return found


def dataset_roots(folder: Location) -> list[str]:
    """The data sets in ``folder``: the paths, relative to it, of the folders that hold manifests (``""`` for
    ``folder`` itself)."""
    roots = set()
    for relative, _ in folder.files(include_hidden=True):
        parent, name = posixpath.split(relative)
        if posixpath.basename(parent) == MANIFEST_FOLDER and _VERSION_FILE.match(name):
            roots.add(posixpath.dirname(parent))
    return sorted(roots)


def latest_version(root: Location, keyring: KeyRing | None, *, key: DataKey | None = None,
                   min_version: int | None = None) -> DataSetVersion | None:
    """The authenticated latest version of the data set in ``root``, or ``None`` when it has no manifest.

    The manifest's data key is ``key`` when that is the key it names, else unwrapped through ``keyring``.
    ``min_version`` refuses an older latest version (or a missing manifest) as a rollback.
    """
    versions = _versions(root)
    if not versions:
        if min_version is not None:
            raise IntegrityError(f"{root.url} has no data-set manifest, but version {min_version} or later was "
                                 "required (deleted manifests, or a rollback)", path=root.url)
        return None
    number = max(versions)
    location = versions[number]
    with location.open("rb") as handle:
        data = handle.read()
    manifest, mac = Manifest.parse(data, name=location.url)
    if manifest.version != number:
        raise IntegrityError(f"{location.url}: states version {manifest.version}, not {number} (a manifest was "
                             "copied over another)", path=location.url)
    if key is None or key.key_id != manifest.key_id:
        if keyring is None:
            raise IntegrityError(f"{location.url}: the manifest is authenticated with data key {manifest.key_id}, "
                                 "which was not given", path=location.url,
                                 hint="give the key settings that unwrap it, or that data key")
        key = keyring.unwrap(manifest.envelope, name=location.url, key_id=manifest.key_id)
    manifest.authenticate(mac, key, name=location.url)
    if min_version is not None and manifest.version < min_version:
        raise IntegrityError(f"{root.url} is at version {manifest.version}, older than the required {min_version} "
                             "(rolled back)", path=root.url,
                             hint="restore the data set's newer versions, or check where the required version came "
                                  "from")
    return DataSetVersion(manifest, hashlib.sha256(data).hexdigest(), location)


def write_version(root: Location, members: Iterable[Member], *, key: DataKey, envelope: tuple[WrappedKey, ...],
                  writer: str, previous: DataSetVersion | None) -> DataSetVersion:
    """Write the next version (version 1 without ``previous``) of the data set in ``root``.

    Raises :class:`~ppml.errors.AlreadyExistsError` when another writer wrote that version first; the caller
    re-reads the latest version and builds on it.
    """
    if previous is None:
        manifest = Manifest.new(list(members), key_id=key.key_id, envelope=envelope, writer=writer)
    else:
        manifest = previous.manifest.next(list(members), key_id=key.key_id, envelope=envelope, writer=writer,
                                          previous_digest=previous.digest)
    data = manifest.seal(key)
    location = root.child(f"{MANIFEST_FOLDER}/v{manifest.version:08d}.json")
    location.create(data)
    sealed, _ = Manifest.parse(data, name=location.url)
    return DataSetVersion(sealed, hashlib.sha256(data).hexdigest(), location)


def dataset_facts(version: DataSetVersion) -> dict[str, object]:
    """What reports say about a data set version."""
    manifest = version.manifest
    return {"id": manifest.dataset, "version": manifest.version, "manifest_digest": version.digest,
            "members": len(manifest.members)}


def member(relative: str, fmt: FileFormat, info: FileInfo, size: int) -> Member:
    """The manifest entry of a file, from its header facts."""
    identity = fmt.identity(info)
    if identity is None:
        raise ValueError(f"{fmt.name} files have no identity to record in a manifest")
    return Member(relative, fmt.name, identity, size)


def _listed(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def check_listing(root: Location, version: DataSetVersion, listing: Mapping[str, int]) -> None:
    """Compare the files found (relative path -> size) with the members; raise naming what differs."""
    members = version.members()
    where = f"{root.url} (data set {version.manifest.dataset[:8]}…, version {version.manifest.version})"
    missing = set(members) - set(listing)
    extra = set(listing) - set(members)
    resized = [p for p in set(members) & set(listing) if members[p].size != listing[p]]
    problems = []
    if missing:
        problems.append(f"missing member(s) {_listed(missing)}")
    if extra:
        problems.append(f"file(s) that are not members: {_listed(extra)} (added, renamed or copied in)")
    if resized:
        problems.append(f"member(s) of another size than recorded: {_listed(resized)} (replaced or truncated)")
    if problems:
        raise IntegrityError(f"{where}: " + "; ".join(problems), path=root.url,
                             hint="the folder was changed outside ppml; restore it from a trusted copy (if a write "
                                  "to it is in progress, read it again when the write has finished)")


def check_member(expected: Member, fmt: FileFormat, info: FileInfo, *, name: str) -> None:
    """Raise when the file ``name`` is not the member the manifest records (format or identity differ)."""
    if fmt.name != expected.format or fmt.identity(info) != expected.file_id:
        raise IntegrityError(f"{name}: not the file the data-set manifest records under {expected.path} (replaced by "
                             "another file)", path=name, hint="restore the data set from a trusted copy")

