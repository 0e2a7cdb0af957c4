"""Attestation: evidence from trusted execution environments, its verifiers, and release policies.

A verifier checks one kind of evidence (SGX or TDX quotes, Microsoft Azure Attestation tokens, TPM
quotes, simulated evidence) and returns the claims it proves; a policy decides whether those claims
earn a key. Verifiers are registered by evidence type and imported only when used.
"""

from ppml.attest.evidence import (
    Evidence,
    EvidenceVerifier,
    VerifiedEvidence,
    available_verifiers,
    binding_digest,
    open_verifier,
    register_verifier,
)

__all__ = [
    "Evidence",
    "EvidenceVerifier",
    "VerifiedEvidence",
    "available_verifiers",
    "binding_digest",
    "open_verifier",
    "register_verifier",
]
