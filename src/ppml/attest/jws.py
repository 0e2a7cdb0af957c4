"""Compact JWS (RFC 7515): splitting a token and checking its signature, with ``cryptography`` alone.

MAA tokens are JWTs of several kilobytes (SGX collateral rides in them); a general JWT library checks each
base64url character in Python, which costs more than the signature check. Here the alphabet is checked with
one regular expression, the segments decoded in C, and the signature checked with the algorithm the caller
pinned for the key (RS256/384/512, PS256, ES256/384); ``alg`` from the token only selects among those.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["JwsError", "split", "payload_object", "signature_valid"]

_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*={0,2}")
_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


class JwsError(ValueError):
    """The token is not a compact JWS with JSON header and payload."""


def _segment(data: bytes, name: str) -> bytes:
    stripped = data.rstrip(b"=")
    if not _SEGMENT.fullmatch(data) or len(stripped) % 4 == 1 or (data != stripped and len(data) % 4):
        raise JwsError(f"its {name} is not base64url")
    try:
        return base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    except binascii.Error:
        raise JwsError(f"its {name} is not base64url") from None


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise JwsError(f"its {name} is not JSON") from None
    if not isinstance(value, dict):
        raise JwsError(f"its {name} is not a JSON object")
    return value


def split(token: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """``(header, payload JSON bytes, signing input, signature)`` of a compact JWS; raises JwsError."""
    raw = token.encode("ascii", "replace")
    parts = raw.split(b".")
    if len(parts) != 3:
        raise JwsError("it does not have three dot-separated parts")
    header = _json_object(_segment(parts[0], "header"), "header")
    return header, _segment(parts[1], "payload"), parts[0] + b"." + parts[1], _segment(parts[2], "signature")


def payload_object(payload: bytes) -> dict[str, Any]:
    """The payload's claims (a JSON object); raises JwsError."""
    return _json_object(payload, "payload")


def signature_valid(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, alg: str, signing_input: bytes,
                    signature: bytes) -> bool:
    """Whether ``signature`` signs ``signing_input`` under ``key`` with ``alg`` (which the caller has matched
    to the key's type)."""
    digest = _HASHES[alg[2:]]()
    try:
        if alg.startswith("RS"):
            key.verify(signature, signing_input, padding.PKCS1v15(), digest)
        elif alg.startswith("PS"):
            key.verify(signature, signing_input, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
        else:  # ES: the raw r || s of RFC 7518, each half the signature
            half = len(signature) // 2
            if len(signature) != 2 * ((key.curve.key_size + 7) // 8):
                return False
            key.verify(encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                            int.from_bytes(signature[half:], "big")),
                       signing_input, ec.ECDSA(digest))
    except InvalidSignature:
        return False
    return True
