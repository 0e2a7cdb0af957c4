"""Evidence, verified claims, the verifier interface and the registry of verifiers.

Evidence travels as JSON: ``{"type": "sgx", ...}`` with fields that depend on the type (each verifier
module documents its own). A verifier checks signatures, certificate chains and freshness of the
evidence at an explicit time and returns :class:`VerifiedEvidence`: the claims the evidence proves,
flattened to names that policies use, and the report data that binds it to a key-release request.
Verifiers never decide whether a key may be released; policies do.

Binding
-------
A caller proves that the evidence was made for one request by putting
``binding_digest(nonce, public_key) = SHA-256(nonce || public_key)`` (32 bytes) into the evidence's
report data: the first 32 bytes of an SGX/TDX quote's 64-byte report data (the remaining 32 bytes zero),
a TPM quote's qualifying data, an MAA token's enclave-held data (``x-ms-sgx-ehd``) or its runtime data
claim ``x-ms-runtime.ppml-binding`` (hex).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, final

from ppml.errors import AttestationError
from ppml.registry import Registry

__all__ = [
    "Evidence",
    "VerifiedEvidence",
    "EvidenceVerifier",
    "binding_digest",
    "register_verifier",
    "verifier_class",
    "open_verifier",
    "available_verifiers",
    "b64decode_field",
]

MAX_EVIDENCE_SIZE = 256 * 1024
NONCE_SIZE = 32
PUBLIC_KEY_SIZE = 32


def binding_digest(nonce: bytes, public_key: bytes) -> bytes:
    """``SHA-256(nonce || public_key)``: what report data must carry to bind evidence to one request."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a nonce is {NONCE_SIZE} bytes, not {len(nonce)}")
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an X25519 public key is {PUBLIC_KEY_SIZE} bytes, not {len(public_key)}")
    return hashlib.sha256(nonce + public_key).digest()


def b64decode_field(payload: Mapping[str, Any], name: str, *, evidence_type: str) -> bytes:
    """A required base64 (standard or URL-safe) field of an evidence payload, or an AttestationError."""
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise AttestationError(f"{evidence_type} evidence lacks the field {name!r} (base64)")
    try:
        padded = value + "=" * (-len(value) % 4)
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise AttestationError(f"{evidence_type} evidence field {name!r} is not valid base64") from None


@dataclass(frozen=True)
class Evidence:
    """Attestation evidence as sent by a caller: a type name and the type's JSON fields."""

    type: str
    payload: Mapping[str, Any]

    @classmethod
    def from_json(cls, obj: object) -> Evidence:
        if not isinstance(obj, Mapping) or not isinstance(obj.get("type"), str):
            raise AttestationError("evidence must be a JSON object with a string field 'type'")
        return cls(obj["type"], {k: v for k, v in obj.items() if k != "type"})

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **self.payload}

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON of this evidence: how the audit log names it."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class VerifiedEvidence:
    """What verified evidence proves.

    Parameters
    ----------
    type
        The evidence type (``"sgx"``, ``"tdx"``, ``"maa"``, ``"tpm"``, ``"simulated"``).
    claims
        Flat JSON-compatible claims that policies test. Hex values are lowercase. Per type:
        sgx: ``mrenclave``, ``mrsigner``, ``isv_prod_id``, ``isv_svn``, ``debug``, ``tcb_status``,
        ``advisory_ids``; tdx: ``mrtd``, ``rtmr0``..``rtmr3``, ``mrseam``, ``mrconfigid``, ``mrowner``,
        ``debug``, ``tcb_status``, ``advisory_ids``; maa: ``issuer``, ``attestation_type`` and every
        token claim under its own name (``x-ms-sgx-mrenclave``...), ``debug``; tpm: ``pcrs``
        (``{"sha256": {"0": hex, ...}}``), ``ak_subject``; simulated: the claims it states.
        Every type also has ``report_data`` (hex).
    report_data
        The bytes that bind the evidence to a request (see the module docstring), or ``None``.
    identity
        A short description of who made the evidence, for logs and the audit log (no secrets).
    simulated
        ``True`` only for simulated evidence, which proves nothing.
    """

    type: str
    claims: Mapping[str, Any]
    report_data: bytes | None
    identity: str
    simulated: bool = False
    warnings: tuple[str, ...] = field(default=())

    def binds(self, nonce: bytes, public_key: bytes) -> bool:
        """Whether the report data carries ``binding_digest(nonce, public_key)`` (constant time)."""
        if self.report_data is None:
            return False
        expected = binding_digest(nonce, public_key)
        padded = expected + bytes(max(0, len(self.report_data) - len(expected)))
        return hmac.compare_digest(self.report_data, padded)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "identity": self.identity,
            "simulated": self.simulated,
            "claims": dict(self.claims),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }


class EvidenceVerifier(ABC):
    """Checks one type of evidence.

    Subclasses set :attr:`type` and implement :meth:`_verify`; callers use :meth:`verify`, which every
    verifier shares so that none can skip its checks. Verifiers are built from keyword settings (each
    documents its own, e.g. trusted signing keys or CA certificates) and must be safe to call from several
    threads.
    """

    type: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A verifier that overrode verify() would bypass the shared checks (one whose evidence states no time
        # would then take any `at`): refuse it when the class is defined, not when some evidence slips through.
        if "verify" in vars(cls):
            raise TypeError(f"{cls.__qualname__} overrides EvidenceVerifier.verify: implement _verify instead, "
                            "so that the checks every verifier shares still run")

    @final
    def verify(self, evidence: Evidence, *, at: datetime) -> VerifiedEvidence:
        """Verify ``evidence`` as of time ``at``.

        Checks what every type shares, then hands over to the type's own checks (:meth:`_verify`).

        Parameters
        ----------
        evidence
            Evidence of this verifier's :attr:`type`, at most :data:`MAX_EVIDENCE_SIZE` bytes as JSON.
        at
            The time to verify at: a timezone-aware :class:`~datetime.datetime`. Stored evidence can be
            re-checked as of the time it was made.

        Returns
        -------
        VerifiedEvidence
            The claims the evidence proves; never unverified claims.

        Raises
        ------
        AttestationError
            Saying which check failed.
        TypeError, ValueError
            When ``at`` is not a timezone-aware datetime (a mistake of the calling code, not of the evidence).
        """
        if not isinstance(at, datetime):
            raise TypeError(f"at must be a timezone-aware datetime, not {type(at).__name__}: pass e.g. "
                            "datetime.now(timezone.utc)")
        if at.utcoffset() is None:
            raise ValueError(f"at must be a timezone-aware datetime, not the naive {at.isoformat()}: give it a "
                             "time zone, e.g. at.replace(tzinfo=timezone.utc)")
        if evidence.type != self.type:
            raise AttestationError(f"{evidence.type!r} evidence was given to the {self.type} verifier: "
                                   f"verify it with the {evidence.type!r} verifier")
        try:
            size = len(json.dumps(evidence.to_json(), separators=(",", ":")).encode())
        except (TypeError, ValueError):
            raise AttestationError(f"{self.type} evidence is not a JSON document: send the fields as JSON "
                                   "text, numbers, lists and objects") from None
        if size > MAX_EVIDENCE_SIZE:
            raise AttestationError(f"{self.type} evidence is {size} bytes of JSON, more than {MAX_EVIDENCE_SIZE}: "
                                   "send the evidence alone (a quote, its collateral, a token), nothing else")
        return self._verify(evidence, at=at.astimezone(timezone.utc))

    @abstractmethod
    def _verify(self, evidence: Evidence, *, at: datetime) -> VerifiedEvidence:
        """The checks of this evidence type, as of ``at``.

        :meth:`verify` has already checked the type, size and ``at``, which is a UTC datetime here. Each type
        checks its own notion of freshness against ``at`` (collateral validity, token expiry, certificate
        validity). Raises :class:`~ppml.errors.AttestationError` saying which check failed.
        """


_VERIFIERS: Registry[EvidenceVerifier] = Registry(
    "evidence type",
    attribute="type",
    known={
        "sgx": ("ppml.attest.dcap:SgxVerifier", "attest"),
        "tdx": ("ppml.attest.dcap:TdxVerifier", "attest"),
        "maa": ("ppml.attest.maa:MaaVerifier", "attest"),
        "tpm": ("ppml.attest.tpm:TpmVerifier", "attest"),
        "simulated": ("ppml.attest.simulated:SimulatedVerifier", "attest"),
    },
)


def register_verifier(cls: type[EvidenceVerifier], *, replace: bool = False) -> None:
    """Register a verifier class under ``cls.type``; refuses to replace one silently."""
    _VERIFIERS.register(cls, replace=replace)


def verifier_class(evidence_type: str) -> type[EvidenceVerifier]:
    """The verifier class registered for ``evidence_type`` (case-insensitive)."""
    return _VERIFIERS.get(evidence_type)


def open_verifier(evidence_type: str, **settings: Any) -> EvidenceVerifier:
    """A verifier for ``evidence_type`` configured with ``settings``."""
    return verifier_class(evidence_type)(**settings)


def available_verifiers() -> list[str]:
    return _VERIFIERS.names()
