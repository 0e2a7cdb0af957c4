"""Key rotation for encrypted Parquet: re-wrapping keys without touching data, and re-keying.

``ppml rewrap`` and ``ppml rekey`` (:mod:`ppml.io.rotation`) hand PME files to these functions, since a PME
file holds a key per master key rather than one envelope in a header.

Re-wrapping replaces, in every key material of the file that a master key wraps, the copies made by that
primary key with one made by its current version (and drops copies named in ``remove``). Only the KMS's
wrapping of the key-encryption keys changes: the KEKs, the data keys and every data page stay as they are.
A key is never re-wrapped under another master key, so per-column access stays as it was. With internal key
material the footer is rewritten (encrypted or signed again under the same footer key) and the file
replaced atomically by its unchanged column chunks and the new footer; with external key material only
the ``_KEY_MATERIAL_FOR_<file>.json`` beside it changes.

Re-keying rewrites the file under fresh data keys and KEKs, with the same master key per column, algorithm,
footer mode and key material placement.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import KeyAccessError, UsageError
from ppml.io.batch import copy_stream
from ppml.io.storage import Location, staged_output
from ppml.keys.keyring import KeyRing
from ppml.keys.kms import KeyManagementService
from ppml.parquet import footer as pq_footer
from ppml.parquet.datasets import read_file_tail
from ppml.parquet.keymaterial import (
    KeyMaterial,
    KeyReference,
    decode_envelope,
    encode_envelope,
    encode_external_store,
    parse_key_metadata,
)
from ppml.parquet.kms import CONNECTION, FileKeys, arrow_filesystem, explain_failure
from ppml.parquet.settings import ParquetEncryption
from ppml.parquet.tables import publish_file

__all__ = ["rewrap_file", "rekey_file"]


class _Rewrapper:
    """New wrapped strings for the key materials of one file (each distinct string re-wrapped once)."""

    def __init__(self, handle: FileKeys, backend: KeyManagementService, key_name: str, remove: Sequence[str]) -> None:
        self.handle, self.backend, self.key_name, self.remove = handle, backend, key_name, set(remove)
        self.identifier = backend.key_identifier(key_name)
        self.done: dict[str, str] = {}
        self.references: set[str] = set()

    def _ours(self, wrapped: WrappedKey) -> bool:
        return wrapped.kms == self.backend.name and self.backend.canonical_key(wrapped.key) == self.identifier

    def _removed(self, wrapped: WrappedKey) -> bool:
        return f"{wrapped.kms}:{wrapped.key}" in self.remove or wrapped.reference in self.remove

    def material(self, material: KeyMaterial, what: str) -> KeyMaterial:
        old = material.kms_wrapped
        if old not in self.done:
            envelope = decode_envelope(old, name=f"{self.handle.location.url}: {what}")
            kept = [w for w in envelope if not self._ours(w) and not self._removed(w)]
            if any(self._ours(w) for w in envelope):
                self.handle.data_key(material, what=what)  # proves the KEK is this material's (GCM)
                key = self.handle.keyring.unwrap(envelope, name=f"{self.handle.location.url}: {what}")
                kept.append(self.backend.wrap(key, self.key_name))
            if not kept:
                raise KeyAccessError(f"{self.handle.location.url}: removing {', '.join(sorted(self.remove))} would leave "
                                     f"{what} (master key {material.master_key_id!r}) with no wrapped copy",
                                     hint="re-wrap it with another key first")
            self.done[old] = encode_envelope(kept)
            self.references.update(w.reference for w in kept)
        return material.with_kms_wrapped(self.done[old])


def rewrap_file(location: Location, *, keyring: KeyRing, backend: KeyManagementService, key_name: str,
                remove: Sequence[str] = ()) -> dict[str, object]:
    """Re-wrap one PME file's keys (see the module docstring); returns its report entry's status fields."""
    tail = read_file_tail(location)
    handle = FileKeys(location, tail, keyring)
    rewrapper = _Rewrapper(handle, backend, key_name, remove)
    if tail.footer_key_metadata is None:
        raise UsageError(f"{location.url} has no footer key metadata to re-wrap")
    footer_metadata = parse_key_metadata(tail.footer_key_metadata, name=location.url)
    metadata = handle.footer()
    columns, _, _ = pq_footer.column_crypto(metadata, name=location.url)
    if isinstance(footer_metadata, KeyReference):
        store = handle.external_store()
        renewed = {reference: rewrapper.material(KeyMaterial.parse(text, name=handle.store_location.url),
                                                 f"key {reference!r}").to_json()
                   for reference, text in store.items()}
        if renewed != store:
            with staged_output(handle.store_location, force=True) as staging, staging.open("wb") as out:
                out.write(encode_external_store(renewed))
        return {"status": "rewrapped", "keys": sorted(rewrapper.references), "key_material": "external"}
    footer_key = handle.footer_key()
    new_footer = rewrapper.material(footer_metadata, "the footer key").to_json().encode()
    replaced: dict[bytes, bytes] = {}
    for column in columns:
        if column.protection == "column" and column.key_metadata is not None:
            found = parse_key_metadata(column.key_metadata, name=location.url)
            assert isinstance(found, KeyMaterial)  # the footer's metadata is internal, so are the columns'
            replaced[column.key_metadata] = rewrapper.material(found, f"column {column.path!r}").to_json().encode()
    if new_footer == tail.footer_key_metadata and all(k == v for k, v in replaced.items()):
        return {"status": "rewrapped", "keys": sorted(rewrapper.references), "key_material": "internal"}
    new_tail = pq_footer.with_key_metadata(tail, metadata, footer_key, new_footer, replaced, name=location.url)
    with location.open("rb") as source, staged_output(location, force=True) as staging, staging.open("wb") as out:
        copy_stream(_Prefix(source, tail.footer_offset), out)  # column chunks, unchanged and not decrypted
        out.write(new_tail)
    return {"status": "rewrapped", "keys": sorted(rewrapper.references), "key_material": "internal"}


class _Prefix:
    """The first ``size`` bytes of a file object, for :func:`~ppml.io.batch.copy_stream`."""

    def __init__(self, raw, size: int) -> None:
        self.raw, self.left = raw, size
        raw.seek(0)

    def read(self, count: int) -> bytes:
        data = self.raw.read(min(count, self.left))
        self.left -= len(data)
        return data


class _RekeyClient(pe.KmsClient):
    """Wraps new KEKs with the primary key that wrapped each master key's old ones; unwraps through the ring."""

    def __init__(self, keyring: KeyRing, masters: dict[str, WrappedKey]) -> None:
        super().__init__()
        self.keyring, self.masters = keyring, masters

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        old = self.masters[master_key_identifier]
        backend = self.keyring.backend(old.kms)
        if backend is None:
            raise KeyAccessError(f"no {old.kms!r} key management service is configured to wrap with {old.reference}")
        name = master_key_identifier.partition(":")[2] if ":" in master_key_identifier else master_key_identifier
        return encode_envelope((backend.wrap(DataKey(bytes(key_bytes)), name),))

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        envelope = decode_envelope(wrapped_key, name=f"Parquet master key {master_key_identifier!r}")
        return self.keyring.unwrap(envelope, name=f"Parquet master key {master_key_identifier!r}").unsafe_material()


def rekey_file(location: Location, *, keyring: KeyRing) -> dict[str, object]:
    """Rewrite one PME file under fresh data keys and KEKs (same master keys, algorithm and layout)."""
    tail = read_file_tail(location)
    handle = FileKeys(location, tail, keyring)
    metadata = handle.footer()
    columns, _, _ = pq_footer.column_crypto(metadata, name=location.url)
    footer_found = parse_key_metadata(tail.footer_key_metadata or b"", name=location.url)
    external = isinstance(footer_found, KeyReference)
    footer_material = handle.material(tail.footer_key_metadata or b"")
    masters = {footer_material.master_key_id: decode_envelope(footer_material.kms_wrapped, name=location.url)[0]}
    assignment: dict[str, list[str]] = {}
    for column in columns:
        if column.protection == "column" and column.key_metadata is not None:
            material = handle.material(column.key_metadata)
            masters.setdefault(material.master_key_id, decode_envelope(material.kms_wrapped, name=location.url)[0])
            assignment.setdefault(material.master_key_id, []).append(column.path)
        elif column.protection != "footer":
            raise UsageError(f"{location.url}: column {column.path!r} is not encrypted; ppml re-keys only files whose "
                             "every column is", hint="convert it with 'ppml parquet encrypt' instead")
    assert tail.algorithm is not None
    settings = ParquetEncryption(footer_key=footer_material.master_key_id, column_keys=assignment,
                                 algorithm=tail.algorithm.name, plaintext_footer=not tail.encrypted_footer,
                                 external_key_material=external, double_wrapping=footer_material.double_wrapping)
    factory = pe.CryptoFactory(lambda _config: _RekeyClient(keyring, masters))
    filesystem, path = arrow_filesystem(location)
    reading = factory.file_decryption_properties(CONNECTION, pe.DecryptionConfiguration(), path, filesystem)
    staging = location.sibling(f".{location.name}.ppml-partial-{os.urandom(4).hex()}")
    staged = staging.child(location.name)  # the final name: external key material is named after it
    try:
        if staging.is_local:  # pyarrow writes external key material before the file
            os.makedirs(staging.path, exist_ok=True)
        with location.open("rb") as raw:
            source = pq.ParquetFile(raw, decryption_properties=reading)
            config = settings.arrow_config([c.path for c in columns])
            filesystem, path = arrow_filesystem(staged)
            writing = factory.file_encryption_properties(CONNECTION, config, path, filesystem)
            with staged.open("wb") as sink, pq.ParquetWriter(sink, source.schema_arrow,
                                                             encryption_properties=writing) as writer:
                for index in range(source.num_row_groups):
                    writer.write_table(source.read_row_group(index))
        publish_file(staged, location)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise explain_failure(exc, location, lambda: None) from None
    finally:
        if staging.exists():
            staging.remove(recursive=True)
    return {"status": "rekeyed", "bytes": location.size(), "keys": sorted(masters)}
