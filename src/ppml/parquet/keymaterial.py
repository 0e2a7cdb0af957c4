"""PME key material: how a Parquet file records each of its keys, and ppml's wrapped keys inside it.

Parquet's key management tools (pyarrow's ``CryptoFactory``, parquet-java's ``PropertiesDrivenCryptoFactory``)
give every column and the footer a fresh data encryption key (DEK). With *double wrapping* (the default) a
DEK is encrypted locally with AES-GCM under a key encryption key (KEK, 16 random bytes, one per master key
and writer process), and only the KEK goes to the key management service, which wraps it with the *master
key*. The result is *key material*, a JSON object::

    {"keyMaterialType": "PKMT1", "internalStorage": true, "isFooterKey": true,
     "kmsInstanceID": "DEFAULT", "kmsInstanceURL": "DEFAULT", "masterKeyID": "tpch",
     "wrappedDEK": <base64 of nonce (12) || AES-GCM(KEK, DEK, aad = KEK id) || tag (16)>,
     "doubleWrapping": true, "keyEncryptionKeyID": <base64 of 16 random bytes>, "wrappedKEK": <from the KMS>}

stored in the file's key metadata (*internal*) or in ``_KEY_MATERIAL_FOR_<file name>.json`` beside the file
(*external*; the key metadata then says ``{"keyMaterialType": "PKMT1", "internalStorage": false,
"keyReference": "footerKey"}``), a JSON map from references to key material strings.

ppml's key management client makes ``wrappedKEK`` (``wrappedDEK`` without double wrapping) a ppml envelope:
``{"ppml": "wrapped-key/1", "keys": [<WrappedKey JSON>, ...]}``, the wrapped copies of the KEK exactly as
ppml's file headers hold data keys. So the KEK unwraps through any ppml key path (key store, Key Vault, HSM,
the attested key broker), broker policies govern each master key, and ``ppml rewrap`` replaces the copies.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ppml.crypto.envelope import WrappedKey
from ppml.errors import CorruptHeaderError, IntegrityError

__all__ = ["KeyMaterial", "KeyReference", "parse_key_metadata", "encode_envelope", "decode_envelope",
           "is_ppml_wrapped", "external_material_name", "parse_external_store", "encode_external_store",
           "ENVELOPE_SCHEMA", "FOOTER_KEY_REFERENCE"]

ENVELOPE_SCHEMA = "wrapped-key/1"
MATERIAL_TYPE = "PKMT1"
EXTERNAL_PREFIX, EXTERNAL_SUFFIX = "_KEY_MATERIAL_FOR_", ".json"
FOOTER_KEY_REFERENCE = "footerKey"
_MAX_JSON = 1024 * 1024


def _corrupt(name: str, what: str) -> CorruptHeaderError:
    return CorruptHeaderError(f"{name}: {what}", path=name,
                              hint="the file's key metadata was damaged or is not Parquet key material")


def _json_object(text: str | bytes, *, name: str, what: str) -> dict:
    if len(text) > _MAX_JSON:
        raise _corrupt(name, f"the {what} is larger than {_MAX_JSON} bytes")
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _corrupt(name, f"the {what} is not JSON") from None
    if not isinstance(document, dict):
        raise _corrupt(name, f"the {what} is not a JSON object")
    return document


def encode_envelope(envelope: Sequence[WrappedKey]) -> str:
    """The wrapped-key string ppml's key management client gives PME: the copies of one key, as JSON."""
    return json.dumps({"ppml": ENVELOPE_SCHEMA, "keys": [w.to_json() for w in envelope]}, separators=(",", ":"))


def is_ppml_wrapped(text: str) -> bool:
    return text.lstrip().startswith("{") and f'"ppml":"{ENVELOPE_SCHEMA}"' in text.replace(" ", "")


def decode_envelope(text: str, *, name: str) -> tuple[WrappedKey, ...]:
    """The wrapped copies in a string from :func:`encode_envelope`; raises naming ``name`` for anything else."""
    document = _json_object(text, name=name, what="wrapped key")
    if document.get("ppml") != ENVELOPE_SCHEMA or not isinstance(document.get("keys"), list) or not document["keys"]:
        raise _corrupt(name, "the key was not wrapped by ppml (its key management client is another one)")
    try:
        return tuple(WrappedKey.from_json(entry) for entry in document["keys"])
    except ValueError as exc:
        raise _corrupt(name, f"a wrapped key is malformed ({exc})") from None


@dataclass(frozen=True)
class KeyMaterial:
    """One key's material (see the module docstring); :attr:`document` keeps every field in its order."""

    document: dict

    @classmethod
    def parse(cls, text: str | bytes, *, name: str) -> KeyMaterial:
        document = _json_object(text, name=name, what="key material")
        if document.get("keyMaterialType") != MATERIAL_TYPE:
            raise _corrupt(name, f"unknown key material type {str(document.get('keyMaterialType'))[:40]!r}")
        for member in ("masterKeyID", "wrappedDEK"):
            if not isinstance(document.get(member), str):
                raise _corrupt(name, f"the key material has no {member}")
        if document.get("doubleWrapping") is True:
            for member in ("keyEncryptionKeyID", "wrappedKEK"):
                if not isinstance(document.get(member), str):
                    raise _corrupt(name, f"the double-wrapped key material has no {member}")
        return cls(document)

    @property
    def master_key_id(self) -> str:
        return self.document["masterKeyID"]

    @property
    def is_footer_key(self) -> bool:
        return self.document.get("isFooterKey") is True

    @property
    def double_wrapping(self) -> bool:
        return self.document.get("doubleWrapping") is True

    @property
    def kms_wrapped(self) -> str:
        """What the key management service wrapped: the KEK (double wrapping) or the DEK itself."""
        return self.document["wrappedKEK" if self.double_wrapping else "wrappedDEK"]

    def with_kms_wrapped(self, wrapped: str) -> KeyMaterial:
        """The same material with :attr:`kms_wrapped` replaced (re-wrapping changes nothing else)."""
        return KeyMaterial({**self.document, ("wrappedKEK" if self.double_wrapping else "wrappedDEK"): wrapped})

    def data_key(self, unwrapped: bytes, *, name: str) -> bytes:
        """The DEK, given what the key management service unwrapped (:attr:`kms_wrapped`)."""
        if not self.double_wrapping:
            return unwrapped
        try:
            kek_id, sealed = _canonical_b64(self.document["keyEncryptionKeyID"]), _canonical_b64(self.document["wrappedDEK"])
        except (binascii.Error, ValueError, TypeError):
            raise _corrupt(name, "the key material is not base64 where it must be") from None
        if len(sealed) < 12 + 16:
            raise _corrupt(name, "the wrapped data key is too short")
        try:
            return AESGCM(unwrapped).decrypt(sealed[:12], sealed[12:], kek_id)
        except (InvalidTag, ValueError):
            raise IntegrityError(f"{name}: the data key of master key {self.master_key_id!r} failed authentication "
                                 "under its key encryption key", path=name,
                                 hint="the key material was changed or assembled from other files") from None

    def to_json(self) -> str:
        return json.dumps(self.document, separators=(",", ":"))


def _canonical_b64(text: str) -> bytes:
    """Strict base64: only the one encoding of its bytes (changed padding bits are a change, not a synonym)."""
    raw = base64.b64decode(text, validate=True)
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("not canonical base64")
    return raw


@dataclass(frozen=True)
class KeyReference:
    """Key metadata that points at external key material: the file's store holds it under :attr:`reference`."""

    reference: str


def parse_key_metadata(data: bytes, *, name: str) -> KeyMaterial | KeyReference:
    """Key metadata from a Parquet footer: the key material itself (internal) or a reference to it."""
    document = _json_object(data, name=name, what="key metadata")
    if document.get("internalStorage") is False:
        reference = document.get("keyReference")
        if not isinstance(reference, str) or not reference:
            raise _corrupt(name, "the key metadata refers to external key material but names no key")
        return KeyReference(reference)
    return KeyMaterial.parse(data, name=name)


def external_material_name(file_name: str) -> str:
    """The name of the external key material file of the Parquet file ``file_name`` (in the same folder)."""
    return f"{EXTERNAL_PREFIX}{file_name}{EXTERNAL_SUFFIX}"


def parse_external_store(data: bytes, *, name: str) -> dict[str, str]:
    document = _json_object(data, name=name, what="key material file")
    if not all(isinstance(v, str) for v in document.values()):
        raise _corrupt(name, "the key material file maps a key to something other than a string")
    return document


def encode_external_store(materials: dict[str, str]) -> bytes:
    return json.dumps(materials, separators=(",", ":")).encode()
