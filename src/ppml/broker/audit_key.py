"""The broker's audit key: an Ed25519 signing key that exists only wrapped by a primary key in a KMS or HSM.

The key file is a ppml data-key file (0600, ``ppml keys inspect`` reads it): 32 random bytes wrapped by a
primary key of any backend the broker holds (local key store, PKCS#11 HSM, Azure Key Vault). The broker
unwraps it once at start, through the same backends that unwrap data keys, and derives the signing key
from it (HKDF-SHA256, so the bytes cannot double as a data key). Whoever can rewrite the log file but cannot
have the KMS unwrap this file cannot sign.

Beside it, ``<file>.pub`` holds the verification key (PEM): publish it; ``ppml broker audit verify --key``
takes it. Neither file is secret in the sense that matters: the key file is wrapped, the ``.pub`` is public.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ppml.broker.audit import AuditSigner, key_id_of
from ppml.crypto.datakey import DataKey
from ppml.errors import ConfigError, NotFoundError
from ppml.keys import secure_files
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.keyring import KeyRing
from ppml.keys.kms import KeyManagementService

__all__ = ["create_audit_key", "load_audit_signer", "load_verification_key", "public_key_path"]

_INFO = b"ppml-broker audit signing key/ed25519"


def public_key_path(key_file: str | Path) -> Path:
    """Where the verification key of ``key_file`` is: ``<key_file>.pub``."""
    key_file = Path(key_file)
    return key_file.with_name(key_file.name + ".pub")


def _private_key(material: DataKey) -> Ed25519PrivateKey:
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(material.unsafe_material())
    return Ed25519PrivateKey.from_private_bytes(seed)


def _pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def create_audit_key(key_file: str | Path, backend: KeyManagementService, key_name: str) -> str:
    """Make an audit key wrapped by ``backend``'s primary key ``key_name``; write the key file and its
    ``.pub``; return the key id. Refuses to overwrite either file."""
    key_file = Path(key_file)
    if public_key_path(key_file).exists():
        raise ConfigError(f"{public_key_path(key_file)} already exists", hint="keep it, or remove both files first")
    material, wrapped = backend.generate_data_key(key_name)
    public_key = _private_key(material).public_key()
    DataKeyFile.new(material.key_id, (wrapped,)).save(key_file)
    secure_files.write_private(public_key_path(key_file), _pem(public_key))
    return key_id_of(public_key)


def load_audit_signer(key_file: str | Path, backends: list[KeyManagementService]) -> AuditSigner:
    """The signer of the audit key in ``key_file``, unwrapped by one of ``backends``; its ``.pub``, when
    present, must be the matching verification key."""
    _, material = KeyRing(backends).open_data_key_file(str(key_file))
    signer = AuditSigner(_private_key(material))
    published = public_key_path(key_file)
    if published.exists() and key_id_of(load_verification_key(published)) != signer.key_id:
        raise ConfigError(f"the verification key {published} does not belong to the audit key {key_file}",
                          hint="restore the .pub written with the key file (it is public; keep copies)")
    return signer


def load_verification_key(path: str | Path) -> Ed25519PublicKey:
    """An audit verification key from a PEM file (``<key file>.pub``)."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise NotFoundError(f"audit verification key {path} does not exist") from None
    except ValueError:
        raise ConfigError(f"{path} is not a PEM public key",
                          hint="give the .pub file written with the audit key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 key (audit keys are Ed25519)")
    return key

