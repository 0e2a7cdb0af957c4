"""Encrypted Parquet files and folders on storage: found, checked against data-set manifests, published.

A folder of encrypted Parquet files is a data set like every encrypted folder ppml writes
(:mod:`ppml.io.datasets`): ``_ppml_manifest/`` records each member's path, size and identity, the
``aad_file_unique`` of its footer. Readers check the folder against the manifest and each file's tail
against its entry before reading it (:func:`checked_parts`); writers stage their files under
``_temporary/`` and :func:`publish` moves them into place and records the next version.

The manifest is authenticated with a data key: the writer's data-key file when it has one, else a fresh
data key wrapped by the footer's master key (:func:`manifest_key`), so a reader that may read the footer
may check the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import FileInfo, get_format
from ppml.crypto.manifest import Member
from ppml.errors import IntegrityError, PpmlError
from ppml.io.datasets import DataSetVersion, check_member, commit_version, file_dataset, latest_version, member
from ppml.io.files import checked_members
from ppml.io.storage import Location, locate, move_files
from ppml.keys.keyring import KeyRing
from ppml.keys.settings import KeySettings
from ppml.parquet.footer import Tail, read_tail
from ppml.parquet.format import PARQUET_FORMAT, tail_facts
from ppml.parquet.keymaterial import external_material_name
from ppml.parquet.masterkeys import master_backend

__all__ = ["Part", "read_file_tail", "is_encrypted_parquet", "part_info", "checked_parts", "manifest_key",
           "publish", "member_of"]


@dataclass(frozen=True)
class Part:
    """One Parquet file of a read: where it is, its tail and size."""

    location: Location
    tail: Tail
    size: int


def read_file_tail(location: Location) -> Tail:
    with location.open("rb", header_only=True) as raw:
        return read_tail(raw, name=location.url)


def is_encrypted_parquet(location: Location) -> bool:
    """Whether ``location`` is a PME file (by its tail: plaintext-footer files start like ordinary Parquet)."""
    try:
        return read_file_tail(location).algorithm is not None
    except PpmlError:
        return False


def part_info(location: Location, tail: Tail) -> FileInfo:
    envelope, facts = tail_facts(tail, name=location.url)
    return FileInfo(PARQUET_FORMAT, envelope, {**facts, "size": tail.size})


def checked_parts(path: str | Location, *, keyring: KeyRing | None, min_version: int | None = None,
                  encrypted: bool = True, versions: dict[str, int] | None = None) -> list[Part]:
    """The Parquet files at ``path`` (a file or a folder), checked as every ppml reader checks its input.

    A folder's data sets are checked against their manifests (:func:`ppml.io.files.checked_members`: nothing
    missing, added, renamed or resized; ``min_version`` refuses a rollback), then each member's tail against
    its entry. A file that is not encrypted Parquet raises :class:`~ppml.errors.IntegrityError` unless
    ``encrypted`` is false (plaintext Parquet read as such). ``versions``, when given, receives the version
    checked of each data set, by its URL.
    """
    location = locate(path) if isinstance(path, str) else path
    entries = location.files()
    members = checked_members(location, entries, keyring=keyring, key=None, mode=None, min_version=min_version,
                              versions=versions) if encrypted else None
    if encrypted and not location.is_dir():
        members = _membership(location, keyring, versions)
    fmt = get_format(PARQUET_FORMAT)
    parts = []
    for relative, size in entries:
        current = location.child(relative) if relative else location
        tail = read_file_tail(current)
        if encrypted:
            info = part_info(current, tail)  # raises for plaintext Parquet
            if members is not None and relative in members:
                check_member(members[relative], fmt, info, name=current.url)
        elif tail.algorithm is not None:
            raise IntegrityError(f"{current.url} is encrypted Parquet, but plaintext was asked for", path=current.url,
                                 hint="read it with an encrypted crypto mode (aes_gcm_v1)")
        parts.append(Part(current, tail, size))
    return parts


def _membership(location: Location, keyring: KeyRing | None,
                versions: dict[str, int] | None) -> dict[str, Member] | None:
    """A single file's entry in the data set of its folder (if that folder is one), by the key ``""``."""
    folder = file_dataset(location)
    if folder is None:
        return None
    version = latest_version(folder, keyring)
    if version is None:
        return None
    if versions is not None:
        versions[folder.url] = version.manifest.version
    entry = version.members().get(location.name)
    if entry is None:
        raise IntegrityError(f"{location.url} is not a member of the data set in {folder.url} (added or renamed)",
                             path=location.url, hint="restore the data set from a trusted copy")
    return {"": entry}


def manifest_key(keys: KeySettings, footer_key: str,
                 data_key: str | None = None) -> tuple[DataKey, tuple[WrappedKey, ...]]:
    """The data key that authenticates a new manifest version: ``data_key``'s (a data-key file), else a
    fresh one wrapped by the footer's master key."""
    if data_key is not None:
        record, key = keys.keyring().open_data_key_file(data_key)
        return key, record.envelope
    backend, name = master_backend(keys, footer_key)
    key, wrapped = backend.generate_data_key(name)
    return key, (wrapped,)


def _sidecar(location: Location) -> Location:
    return location.sibling(external_material_name(location.name))


def publish(root: Location, parts: Sequence[tuple[Location, str]], *, replace: bool, key: DataKey,
            envelope: tuple[WrappedKey, ...], keyring: KeyRing, writer: str) -> DataSetVersion:
    """Move staged files into the data set at ``root`` and record its next version.

    ``parts`` are ``(staged file, final relative path)``; external key material beside a staged file moves
    with it. With ``replace`` the data set is exactly these files afterwards (old files and their key
    material are deleted once the new ones are in place); otherwise they join the latest version.
    """
    produced = {relative for _, relative in parts}
    stale: list[Location] = []
    if replace and root.exists():
        for relative, _ in root.files():
            if relative not in produced:
                stale.append(root.child(relative))
    pairs = []
    for staged, relative in parts:
        final = root.child(relative)
        if _sidecar(staged).exists():
            pairs.append((_sidecar(staged).path, _sidecar(final).path))
        pairs.append((staged.path, final.path))
    move_files(root, pairs)
    for location in stale:
        for old in (location, _sidecar(location)):
            if old.exists():
                old.remove()
    added = [member_of(root, relative) for _, relative in parts]
    return commit_version(root, added, replace=replace, key=key, envelope=envelope, keyring=keyring, writer=writer,
                          existing=lambda: [member_of(root, r) for r, _ in root.files() if r not in produced])


def member_of(root: Location, relative: str):
    location = root.child(relative)
    tail = read_file_tail(location)
    return member(relative, get_format(PARQUET_FORMAT), part_info(location, tail), tail.size)
