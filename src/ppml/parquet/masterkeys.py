"""PME master keys are ppml primary keys: wrapping and unwrapping a key under one, through KeySettings.

Both key management clients (pyarrow's, :mod:`ppml.parquet.kms`, and parquet-java's, through the key agent
:mod:`ppml.parquet.agent`) call these two functions, so every writer and reader of encrypted Parquet uses
the same key path. A master key is named as in ``--key-name`` (``tpch``), or ``kms:name`` (``pkcs11:pii``)
for a key of a key management service other than the primary one. This module needs no pyarrow.
"""

from __future__ import annotations

from ppml.crypto.datakey import DataKey
from ppml.errors import ConfigError
from ppml.keys.keyring import KeyRing
from ppml.keys.kms import KeyManagementService
from ppml.keys.settings import PRIMARY_KMS, KeySettings
from ppml.parquet.keymaterial import decode_envelope, encode_envelope

__all__ = ["master_backend", "wrap", "unwrap", "master_key_of"]


def master_backend(keys: KeySettings, master_key: str) -> tuple[KeyManagementService, str]:
    """The service holding master key ``master_key`` and the key's name in it."""
    kms, sep, name = master_key.partition(":")
    if sep and kms.lower() in PRIMARY_KMS and name:
        backend = keys.keyring().backend(kms.lower())
        if backend is None:
            raise ConfigError(f"the Parquet master key {master_key!r} names the {kms} key management service, which "
                              "is not configured", hint="give its settings (--vault, --token ...) with the key options")
        return backend, name
    return keys.primary(), master_key


def wrap(keys: KeySettings, key: bytes, master_key: str) -> str:
    """``key`` wrapped by the current version of ``master_key``, as the string PME stores."""
    backend, name = master_backend(keys, master_key)
    return encode_envelope((backend.wrap(DataKey(bytes(key)), name),))


def unwrap(keyring: KeyRing, wrapped: str, master_key: str) -> bytes:
    """The key a string from :func:`wrap` holds, through a key ring (``KeySettings.keyring()``: broker, KMS,
    HSM)."""
    what = f"Parquet master key {master_key!r}"
    return keyring.unwrap(decode_envelope(wrapped, name=what), name=what).unsafe_material()


def master_key_of(keys: KeySettings, envelope) -> str:
    """The master key (as :func:`master_backend` names it) that wraps a data-key file's first copy.

    ``WrappedKey.key`` is the backend's identifier of its primary key (a Key Vault key URL, a token and a
    name); the name is its last part when the backend maps that name back to the identifier.
    """
    wrapped = envelope[0]
    backend = keys.keyring().backend(wrapped.kms)
    name = wrapped.key.rstrip("/").rsplit("/", 1)[-1]
    if backend is not None and backend.key_identifier(name) != backend.canonical_key(wrapped.key):
        name = wrapped.key
    return name if wrapped.kms == keys.kms else f"{wrapped.kms}:{name}"
