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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from fsspec.utils import glob_translate

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import FileFormat, FileInfo
from ppml.crypto.manifest import Manifest, Member
from ppml.errors import AlreadyExistsError, IntegrityError
from ppml.io.storage import Location
from ppml.keys.keyring import KeyRing

__all__ = [
    "MANIFEST_FOLDER",
    "UNPROTECTED_WARNING",
    "DataSetVersion",
    "ReadPlan",
    "check_listing",
    "check_member",
    "check_read",
    "commit_version",
    "dataset_facts",
    "dataset_roots",
    "file_dataset",
    "latest_manifest_number",
    "latest_version",
    "member",
    "write_version",
]

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


def file_dataset(location: Location) -> Location | None:
    """The data set a single file belongs to, if any: its folder, when that folder holds a manifest."""
    folder = location.at(posixpath.dirname(location.path.rstrip("/")))
    return folder if folder.child(MANIFEST_FOLDER).exists() else None


def latest_manifest_number(root: Location) -> int:
    """The number of the latest manifest of the data set in ``root`` (not checked)."""
    versions = _versions(root)
    if not versions:
        raise IntegrityError(f"{root.url} has no data-set manifest", path=root.url,
                             hint="results and encrypted folders written by ppml have one")
    return max(versions)


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



def commit_version(root: Location, added: Iterable[Member], *, replace: bool, key: DataKey,
                   envelope: tuple[WrappedKey, ...], keyring: KeyRing, writer: str,
                   existing: Callable[[], list[Member]], attempts: int = 20) -> DataSetVersion:
    """Record a write to the data set in ``root`` as its next version, and return it.

    ``added`` are the files the write put in place; with ``replace`` they are the whole data set, otherwise
    they join the latest version's members (a file at a member's path replaces it). A folder without a
    manifest whose files are appended to gets one: ``existing()`` lists its files as members. When another
    writer records a version first, the latest one is read again and built on, so concurrent appends keep
    every writer's files.
    """
    added = {m.path: m for m in added}
    for _ in range(attempts):
        previous = latest_version(root, keyring)
        if replace:
            members = dict(added)
        else:
            base = previous.manifest.members if previous is not None else existing()
            members = {**{m.path: m for m in base}, **added}
        try:
            return write_version(root, members.values(), key=key, envelope=envelope, writer=writer,
                                 previous=previous)
        except AlreadyExistsError:
            continue  # another writer recorded that version first: build on it
    raise IntegrityError(f"{root.url}: could not record a new version after {attempts} attempts (other writers "
                         "kept recording versions first)", path=root.url, hint="retry the write")


@dataclass(frozen=True)
class ReadPlan:
    """What a read of files found its data sets to record: the member of each file to read (by URL), the
    data-set versions read by the URL of their folder, and (``unprotected``) the files no manifest vouches for.
    A file found that is in neither (added by a version later than the one read) is not to be read."""

    members: dict[str, Member]
    versions: dict[str, DataSetVersion]
    unprotected: list[str]


def _enclosing_root(folder: Location, known: dict[str, Location | None]) -> Location | None:
    """The data set a folder belongs to: it, or its nearest ancestor with a manifest (``None``: no data set)."""
    chain = []
    current = folder
    while current.path not in known:
        chain.append(current)
        if current.child(MANIFEST_FOLDER).exists():
            found: Location | None = current
            break
        parent = current.at(posixpath.dirname(current.path.rstrip("/")))
        if parent.path.rstrip("/") == current.path.rstrip("/") or (current.is_azure and "/" not in
                                                                    current.path.strip("/")):
            found = None  # the file system's root, or an Azure container: no data set above
            break
        current = parent
    else:
        found = known[current.path]
    for visited in chain:
        known[visited.path] = found
    return found


def _covered(spec: tuple[Location, bool], path: str) -> bool:
    location, is_glob = spec
    if is_glob:
        return re.match(glob_translate(location.path), path) is not None
    return path == location.path or path.startswith(location.path.rstrip("/") + "/")


def _version_file(root: Location, number: int, keyring: KeyRing | None) -> tuple[Manifest, str, bytes]:
    """Version ``number`` of the data set in ``root``, authenticated, with its digest and bytes."""
    location = root.child(f"{MANIFEST_FOLDER}/v{number:08d}.json")
    if not location.exists():
        raise IntegrityError(f"{root.url} no longer has version {number} (its manifest was removed)", path=root.url)
    with location.open("rb") as handle:
        data = handle.read()
    manifest, mac = Manifest.parse(data, name=location.url)
    if manifest.version != number:
        raise IntegrityError(f"{location.url}: states version {manifest.version}, not {number}", path=location.url)
    if keyring is None:
        raise IntegrityError(f"{location.url}: no key settings to check it with", path=location.url)
    manifest.authenticate(mac, keyring.unwrap(manifest.envelope, name=location.url, key_id=manifest.key_id),
                          name=location.url)
    return manifest, hashlib.sha256(data).hexdigest(), data


def _snapshot(root: Location, latest: DataSetVersion, wanted: int,
              keyring: KeyRing | None) -> tuple[DataSetVersion, set[str]]:
    """Version ``wanted`` of a data set now at ``latest``, and the paths that later versions added.

    The versions between are read and their chain of digests followed back from the latest, so the older
    version is the data set's own history, not a manifest put there.
    """
    if wanted > latest.manifest.version:
        raise IntegrityError(f"{root.url} is at version {latest.manifest.version}, older than the version {wanted} "
                             "the read was defined on (rolled back)", path=root.url)
    later: set[str] = set()
    current, digest = latest.manifest, latest.digest
    while current.version > wanted:
        later.update(m.path for m in current.members)
        older, older_digest, _ = _version_file(root, current.version - 1, keyring)
        if current.previous != older_digest or older.dataset != current.dataset:
            raise IntegrityError(f"{root.url}: version {older.version} is not the one version {current.version} "
                                 "follows (the data set's history was changed)", path=root.url)
        current, digest = older, older_digest
    snapshot = DataSetVersion(current, digest, root.child(f"{MANIFEST_FOLDER}/v{current.version:08d}.json"))
    return snapshot, later - {m.path for m in current.members}


def check_read(specs: list[tuple[Location, bool]], files: Mapping[str, tuple[Location, int]],
               keyring: KeyRing | None, *, expected: Mapping[str, int] | None = None) -> ReadPlan:
    """Check the files a read found (URL -> (location, stored size)) against the manifests of their data sets.

    ``specs`` are what the read named: locations, and whether each is a glob. For every data set the files
    belong to, each file must be a member, of the recorded size, and every member the specs cover must have
    been found. The version checked is the latest one, or (``expected``: data-set URL -> version) the version
    the read was defined on, so that a read sees one whole version while appends go on: the files later
    versions added are then left out of :attr:`ReadPlan.members` and must not be read. Raises
    :class:`~ppml.errors.IntegrityError` naming what differs.
    """
    known: dict[str, Location | None] = {}
    by_root: dict[str, tuple[Location, dict[str, tuple[Location, int]]]] = {}
    unprotected = []
    for url, (location, size) in files.items():
        root = _enclosing_root(location.at(posixpath.dirname(location.path)), known)
        if root is None:
            unprotected.append(url)
            continue
        by_root.setdefault(root.path, (root, {}))[1][url] = (location, size)
    members: dict[str, Member] = {}
    versions: dict[str, DataSetVersion] = {}
    for root, found in by_root.values():
        version = latest_version(root, keyring)
        assert version is not None
        later: set[str] = set()
        wanted = (expected or {}).get(root.url)
        if wanted is not None and wanted != version.manifest.version:
            version, later = _snapshot(root, version, wanted, keyring)
        manifest = version.manifest
        prefix = root.path.rstrip("/") + "/"
        listing = {location.path[len(prefix):]: size for location, size in found.values()}
        listing = {path: size for path, size in listing.items() if path not in later}
        recorded = {m.path: m for m in manifest.members}
        covered = {path: m for path, m in recorded.items() if any(_covered(s, prefix + path) for s in specs)}
        check_listing(root, DataSetVersion(replace(manifest, members=tuple(covered.values())), version.digest,
                                           version.location), listing)
        members.update({url: recorded[loc.path[len(prefix):]] for url, (loc, _) in found.items()
                        if loc.path[len(prefix):] in recorded})
        versions[root.url] = version
    return ReadPlan(members, versions, sorted(unprotected))
