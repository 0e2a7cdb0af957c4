"""Reusing a full DCAP verification for later quotes of the same enclave (or TD) on the same platform.

A v3 SGX or v4 TDX quote is ``header || report body || signature data``, and the signature data is the
attestation key's ECDSA signature over header and body, the attestation key, the quoting enclave's report
(signed by the platform's PCK key, whose chain follows, and carrying a hash of the attestation key), and the
PCK certificate chain. Two quotes one enclave instance makes for two requests differ in two places only:
the report data and the signature over it.

So once ``dcap-qvl`` has verified a quote in full (every signature, the PCK chain to the root, the CRLs,
the TCB info and QE identity, the TCB level), a later quote that is byte for byte the same outside those two
places needs one check: its signature, by the attestation key the verified quote carried. That is what
:class:`VerifiedQuotes` does, for ``cache`` seconds (default 60) after the full verification; the claims
(MRENCLAVE, attributes, TCB status...) are those of the full verification, the report data this quote's.

What the reuse changes: collateral is not re-read within those seconds, so a quote is accepted up to that
long after its collateral's validity ends, and the TCB status is the one the first quote's collateral gave
(a caller can send any still-valid Intel-signed collateral anyway; a broker that configures its own is
unaffected). ``cache: 0`` verifies every quote in full. Quotes of other versions (v5) always are.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["VerifiedQuotes", "quote_layout"]

_HEADER = 48
_BODY_SIZE = {(3, 0x00): 384, (4, 0x81): 584}  # (quote version, TEE type) -> report body size
_REPORT_DATA = {0x00: 320, 0x81: 520}  # report data offset within the body, per TEE type
_MAX_ENTRIES = 1024


@dataclass(frozen=True)
class QuoteLayout:
    """Where the parts of one quote are (absolute offsets)."""

    signed_end: int  # header and body: what the quote signature covers
    report_data: int
    signature: int  # the 64-byte r || s; the 64-byte attestation key follows it


def quote_layout(quote: bytes) -> QuoteLayout | None:
    """The layout of a v3 SGX or v4 TDX quote, or ``None`` (another version, or too short to hold one)."""
    if len(quote) < _HEADER:
        return None
    version, _, tee_type = struct.unpack_from("<HHI", quote)
    body = _BODY_SIZE.get((version, tee_type))
    if body is None or len(quote) < _HEADER + body + 4 + 128:
        return None
    end = _HEADER + body
    return QuoteLayout(end, _HEADER + _REPORT_DATA[tee_type], end + 4)


@dataclass(frozen=True)
class _Verified:
    claims: Mapping[str, Any]  # without report_data
    attestation_key: ec.EllipticCurvePublicKey
    until: float


class VerifiedQuotes:
    """Quotes verified in full within the last ``seconds``, by what they share with later quotes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: dict[bytes, _Verified] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(quote: bytes, layout: QuoteLayout) -> bytes:
        digest = hashlib.sha256()
        digest.update(quote[:layout.report_data])
        digest.update(quote[layout.report_data + 64:layout.signature])
        digest.update(quote[layout.signature + 64:])
        return digest.digest()

    def claims(self, quote: bytes, layout: QuoteLayout) -> dict[str, Any] | None:
        """The claims of ``quote`` if a quote the same outside report data and signature was verified in full
        within the last ``seconds`` and ``quote``'s own signature verifies; else ``None`` (verify in full)."""
        key = self._key(quote, layout)
        with self._lock:
            known = self._entries.get(key)
        if known is None or known.until < time.monotonic():
            return None
        signature = quote[layout.signature:layout.signature + 64]
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        try:
            known.attestation_key.verify(der, quote[:layout.signed_end], ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return None  # the full verification then says what is wrong with it
        return {**known.claims, "report_data": quote[layout.report_data:layout.report_data + 64].hex()}

    def remember(self, quote: bytes, layout: QuoteLayout, claims: Mapping[str, Any]) -> None:
        """Record a quote ``dcap-qvl`` verified in full, with its claims."""
        point = b"\x04" + quote[layout.signature + 64:layout.signature + 128]
        entry = _Verified({k: v for k, v in claims.items() if k != "report_data"},
                          ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point),
                          time.monotonic() + self.seconds)
        with self._lock:
            if len(self._entries) >= _MAX_ENTRIES:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v.until >= now}
                while len(self._entries) >= _MAX_ENTRIES:
                    del self._entries[next(iter(self._entries))]
            self._entries[self._key(quote, layout)] = entry
