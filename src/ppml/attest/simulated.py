"""Simulated attestation, for tests and demos on machines without a TEE. It proves nothing.

Evidence
--------
``{"type": "simulated", "report_data": "<hex>", "claims": {...}}``. Anyone can write such a document, so
besides the checks every verifier makes (type, size, verification time) the verifier only checks its shape,
marks the result ``simulated=True`` and warns (:class:`~ppml.errors.PpmlInsecureWarning`) on every call.
Whether simulated evidence may earn a key is the policy's decision; a production policy refuses it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ppml.attest.attester import Attester
from ppml.attest.evidence import Evidence, EvidenceVerifier, VerifiedEvidence
from ppml.errors import AttestationError, ConfigError, PpmlInsecureWarning

__all__ = ["SimulatedVerifier", "SimulatedAttester"]

_MAX_REPORT_DATA = 64
_NOTHING = ("simulated evidence proves nothing: anyone can write it, so accept it only in tests and demos, "
            "never for real data")


class SimulatedVerifier(EvidenceVerifier):
    """Accepts well-formed simulated evidence, marked ``simulated=True``, with a warning every time.

    Claims: the evidence's ``claims``, plus ``report_data`` (hex), which the evidence cannot override.
    """

    type = "simulated"

    def _verify(self, evidence: Evidence, *, at: datetime) -> VerifiedEvidence:
        # Simulated evidence states no validity period, so the shared check of `at` in verify() is all there is.
        # Warn before this type's checks, so even refused simulated evidence is visible in logs; stacklevel 3
        # names the caller of verify().
        warnings.warn(_NOTHING, PpmlInsecureWarning, stacklevel=3)
        report_data = evidence.payload.get("report_data")
        try:
            if not isinstance(report_data, str):
                raise ValueError
            data = bytes.fromhex(report_data)
        except ValueError:
            raise AttestationError("simulated evidence lacks 'report_data' (hex)") from None
        if len(data) > _MAX_REPORT_DATA:
            raise AttestationError(f"simulated report_data is {len(data)} bytes, more than {_MAX_REPORT_DATA}")
        claims = evidence.payload.get("claims", {})
        if not isinstance(claims, Mapping):
            raise AttestationError("simulated evidence field 'claims' must be a JSON object")
        return VerifiedEvidence(self.type, {**claims, "report_data": data.hex()}, data,
                                "simulated (proves nothing)", simulated=True, warnings=(_NOTHING,))


class SimulatedAttester(Attester):
    """Writes simulated evidence carrying the binding and the configured claims, with a warning every time.

    Parameters
    ----------
    claims
        Claims the evidence states (JSON-compatible), e.g. ``{"mrenclave": "ab..."}`` to exercise a policy.
    """

    name = "simulated"

    def __init__(self, claims: Mapping[str, Any] | None = None) -> None:
        claims = dict(claims or {})
        try:
            # A JSON round trip both checks and copies, so later changes by the caller do not leak in.
            self._claims = json.loads(json.dumps(claims))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the simulated attester's claims are not JSON-compatible: {exc}") from None

    def attest(self, binding: bytes) -> Evidence:
        if not isinstance(binding, (bytes, bytearray)):
            raise TypeError(f"binding must be bytes, not {type(binding).__name__}")
        if len(binding) != 32:
            raise ValueError(f"binding must be 32 bytes (binding_digest), not {len(binding)}")
        warnings.warn(_NOTHING, PpmlInsecureWarning, stacklevel=2)
        claims = json.loads(json.dumps(self._claims))  # a copy per evidence: callers may change theirs
        return Evidence(self.name, {"report_data": bytes(binding).hex(), "claims": claims})
