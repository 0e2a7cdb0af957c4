"""The key broker's wire protocol, shared by the broker and its client (specified in docs/broker.md).

1. ``POST /v1/nonce`` → ``{"nonce": b64, "expires_in": seconds}``: a fresh, single-use, short-lived nonce.
2. The caller makes an ephemeral X25519 key pair and evidence whose report data carries
   ``SHA-256(nonce || public_key)`` (:func:`~ppml.attest.evidence.binding_digest`).
3. ``POST /v1/keys/release`` with ``{"nonce", "public_key", "evidence", "keys": [wrapped key, ...]}`` →
   ``{"keys": [{"key": ref, "status": "released", "sealed": b64, "expires_in": s} | {"key": ref,
   "status": "denied", "reason": ...}]}``. Each released data key is sealed to the ephemeral public key
   with HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) and an ``info``
   that names the protocol, the nonce and the digest of the wrapped key it answers (:func:`release_info`),
   so a sealed key cannot be replayed into another request or swapped for another key's answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import KeyAccessError

__all__ = [
    "PROTOCOL",
    "NONCE_PATH",
    "RELEASE_PATH",
    "HEALTH_PATH",
    "MAX_KEYS_PER_REQUEST",
    "EphemeralKey",
    "seal_data_key",
    "check_public_key",
    "release_info",
    "b64",
    "unb64",
]

PROTOCOL = "ppml-broker/v1"
NONCE_PATH = "/v1/nonce"
RELEASE_PATH = "/v1/keys/release"
HEALTH_PATH = "/v1/health"
MAX_KEYS_PER_REQUEST = 64
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, *, what: str) -> bytes:
    """Decode standard base64 or raise ``ValueError`` naming the field."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError(f"{what} is not valid base64") from None


def release_info(nonce: bytes, wrapped: WrappedKey) -> bytes:
    """HPKE ``info`` for the answer to ``wrapped`` in the request with ``nonce``.

    ``PROTOCOL 0x00 "release" 0x00 || nonce (32 bytes) || SHA-256(field(kms) || field(key) || field(version)
    || field(wrapped))`` where ``field(x) = len(x) (4 bytes, big endian) || x``: the lengths keep two
    different wrapped keys from giving the same bytes, whatever characters their names contain.
    """
    fields = (wrapped.kms.encode(), wrapped.key.encode(), wrapped.version.encode(), wrapped.wrapped)
    wrapped_digest = hashlib.sha256(b"".join(struct.pack(">I", len(f)) + f for f in fields)).digest()
    return PROTOCOL.encode() + b"\0release\0" + nonce + wrapped_digest


# Any scalar shows a low-order point (the exchange gives all zeros, which OpenSSL refuses), so one probe key
# serves every check; its secret protects nothing.
_PROBE = X25519PrivateKey.generate()


def check_public_key(public_key: bytes) -> None:
    """Refuse anything but a usable X25519 public key (32 bytes, not a low-order point) with ValueError."""
    if len(public_key) != 32:
        raise ValueError("public_key must be a raw 32-byte X25519 key")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:
        raise ValueError("public_key is not a usable X25519 key (a low-order point)") from None


def seal_data_key(key: DataKey, public_key: bytes, info: bytes) -> bytes:
    """``key`` encrypted to the caller's X25519 ``public_key`` (HPKE ``enc || ciphertext``)."""
    return _SUITE.encrypt(key.unsafe_material(), X25519PublicKey.from_public_bytes(public_key), info=info)


class EphemeralKey:
    """A one-request X25519 key pair: the caller's half of the sealed key release. Never stored."""

    __slots__ = ("_private",)

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def open(self, sealed: bytes, info: bytes, *, reference: str) -> DataKey:
        """The data key sealed to this key pair; a wrong or altered answer raises KeyAccessError."""
        try:
            return DataKey(_SUITE.decrypt(sealed, self._private, info=info))
        except (InvalidTag, ValueError):
            raise KeyAccessError(f"the key broker's answer for {reference} does not open with this request's key",
                                 hint="the answer was altered in transit or belongs to another request, or the broker "
                                      "runs another ppml version (answers are sealed with a length-prefixed HPKE info "
                                      "since the broker's hardening): upgrade the broker and its clients together"
                                 ) from None

    def __repr__(self) -> str:
        return "EphemeralKey(<redacted>)"

    def __reduce__(self):
        raise TypeError("EphemeralKey cannot be pickled")
