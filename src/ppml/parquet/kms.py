"""PME's key management client over ppml's key path, for pyarrow, and the keys of one Parquet file.

:class:`PpmlKmsClient` is a ``pyarrow.parquet.encryption.KmsClient`` over :mod:`ppml.parquet.masterkeys`:
PME's *master keys* are ppml primary keys. Wrapping goes to the primary key management service
(``KeySettings.primary()``); unwrapping goes through this process's key ring (``KeySettings.keyring()``), so
the key broker, when configured, releases each master key's KEKs only to attested processes its policy
allows. No key is kept here: the key ring caches unwrapped keys per process as it does for every format.

:class:`FileKeys` obtains the keys of one file the same way, for what ppml does to a file itself (open its
footer, name each column's key, re-wrap).
"""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Callable

import pyarrow.fs as pafs
import pyarrow.parquet.encryption as pe

from ppml.errors import IntegrityError, PpmlError, UsageError
from ppml.io.storage import Location
from ppml.keys.keyring import KeyRing
from ppml.keys.settings import KeySettings
from ppml.parquet import footer as pq_footer
from ppml.parquet import masterkeys
from ppml.parquet.keymaterial import (
    KeyMaterial,
    KeyReference,
    decode_envelope,
    external_material_name,
    parse_external_store,
    parse_key_metadata,
)

__all__ = ["PpmlKmsClient", "crypto_factory", "decryption_properties", "encryption_properties", "arrow_filesystem",
           "FileKeys", "explain_failure", "CONNECTION", "KEY_CACHE_SECONDS"]

#: PME's connection settings: ppml's client needs none (its settings are a KeySettings).
CONNECTION = pe.KmsConnectionConfig()
#: How long pyarrow may keep an unwrapped KEK; short, so that a key broker's release lifetime is respected
#: (the key ring behind the client keeps keys as long as their backend allows).
KEY_CACHE_SECONDS = 60


class PpmlKmsClient(pe.KmsClient):
    """PME key wrapping through ppml's key settings (see the module docstring); with only a key ring, it
    unwraps (reads, verifies) and cannot wrap."""

    def __init__(self, keys: KeySettings | KeyRing) -> None:
        super().__init__()
        self._keys = keys

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        if not isinstance(self._keys, KeySettings):
            raise UsageError("writing encrypted Parquet needs key settings that can wrap keys, not just a key ring")
        return masterkeys.wrap(self._keys, key_bytes, master_key_identifier)

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        ring = self._keys.keyring() if isinstance(self._keys, KeySettings) else self._keys
        return masterkeys.unwrap(ring, wrapped_key, master_key_identifier)


@functools.lru_cache(maxsize=16)
def crypto_factory(keys: KeySettings | KeyRing) -> pe.CryptoFactory:
    """One factory per key settings or key ring (pyarrow caches KEKs per factory)."""
    return pe.CryptoFactory(lambda _config: PpmlKmsClient(keys))


def arrow_filesystem(location: Location) -> tuple[pafs.FileSystem, str]:
    """A pyarrow file system and path for ``location`` (where pyarrow looks for external key material)."""
    if location.is_local:
        return pafs.LocalFileSystem(), location.path
    return pafs.PyFileSystem(pafs.FSSpecHandler(location.fs)), location.path


def decryption_properties(keys: KeySettings | KeyRing, location: Location | None = None):
    """pyarrow's decryption properties for files under ``keys`` (``location``: for external key material)."""
    config = pe.DecryptionConfiguration(cache_lifetime=_dt.timedelta(seconds=KEY_CACHE_SECONDS))
    if location is None:
        return crypto_factory(keys).file_decryption_properties(CONNECTION, config)
    filesystem, path = arrow_filesystem(location)
    return crypto_factory(keys).file_decryption_properties(CONNECTION, config, path, filesystem)


def encryption_properties(keys: KeySettings, config: pe.EncryptionConfiguration, location: Location | None = None):
    """pyarrow's encryption properties (``location``: where external key material is written beside the file)."""
    if location is None:
        return crypto_factory(keys).file_encryption_properties(CONNECTION, config)
    filesystem, path = arrow_filesystem(location)
    return crypto_factory(keys).file_encryption_properties(CONNECTION, config, path, filesystem)


class FileKeys:
    """The key material of one Parquet file and the keys it yields, obtained through ``keyring``.

    Parameters
    ----------
    location
        The file (its folder holds external key material).
    tail
        Its tail (:func:`ppml.parquet.footer.read_tail`).
    keyring
        Unwraps the KEKs (or DEKs) that the key material's envelopes hold.
    """

    def __init__(self, location: Location, tail: pq_footer.Tail, keyring: KeyRing) -> None:
        self.location, self.tail, self.keyring = location, tail, keyring
        self._store: dict[str, str] | None = None

    @property
    def store_location(self) -> Location:
        return self.location.sibling(external_material_name(self.location.name))

    def external_store(self) -> dict[str, str]:
        if self._store is None:
            store = self.store_location
            if not store.exists():
                raise IntegrityError(f"{self.location.url}: its key material file {store.name} is missing", path=store.url,
                                     hint="external key material lives beside the file; copy both together")
            with store.open("rb") as handle:
                self._store = parse_external_store(handle.read(), name=store.url)
        return self._store

    def material(self, key_metadata: bytes) -> KeyMaterial:
        """The key material that ``key_metadata`` holds or refers to."""
        found = parse_key_metadata(key_metadata, name=self.location.url)
        if isinstance(found, KeyReference):
            text = self.external_store().get(found.reference)
            if text is None:
                raise IntegrityError(f"{self.location.url}: key {found.reference!r} is not in {self.store_location.name}",
                                     path=self.location.url, hint="the key material file belongs to another file")
            return KeyMaterial.parse(text, name=self.store_location.url)
        return found

    def data_key(self, material: KeyMaterial, *, what: str) -> bytes:
        """The DEK of ``material``; ``what`` names the key in errors (``"the footer key"``, ``"column x"``)."""
        name = f"{self.location.url}: {what} (master key {material.master_key_id!r})"
        envelope = decode_envelope(material.kms_wrapped, name=name)
        unwrapped = self.keyring.unwrap(envelope, name=name).unsafe_material()
        return material.data_key(unwrapped, name=self.location.url)

    def footer_key(self) -> bytes:
        if self.tail.footer_key_metadata is None:
            raise IntegrityError(f"{self.location.url}: the footer key's metadata is missing", path=self.location.url)
        return self.data_key(self.material(self.tail.footer_key_metadata), what="the footer key")

    def footer(self):
        """The authenticated ``FileMetaData``."""
        return pq_footer.open_footer(self.tail, self.footer_key(), name=self.location.url)


def explain_failure(error: BaseException, location: Location, diagnose: Callable[[], PpmlError | None]) -> PpmlError:
    """A ppml error for a failed pyarrow read of ``location``: the key error pyarrow passed on, what
    ``diagnose`` finds (a column whose key cannot be had), or an integrity failure naming the file."""
    if isinstance(error, PpmlError):
        found = diagnose()
        return found if found is not None else error
    found = diagnose()
    if found is not None:
        return found
    return IntegrityError(f"{location.url}: the Parquet data failed to decrypt or authenticate ({_first_line(error)})",
                          path=location.url, hint="a page, column chunk or key material was changed, truncated or "
                                                  "swapped; restore the file from a trusted copy")


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
