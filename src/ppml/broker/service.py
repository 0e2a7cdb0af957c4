"""The key broker's decisions, independent of HTTP: nonces, verification, policy, unwrapping, audit.

Every release request ends in audit entries with their reasons: one per requested key once the evidence
has verified (allowed or denied, each on its own), else one for the whole refused request, naming the
keys it asked for (so an unauthenticated flood costs one entry per request, not one per key). Refusals carry no key material:
they are built from the request's public parts and the verifier's or policy's explanation.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ppml.attest.evidence import Evidence, EvidenceVerifier, VerifiedEvidence, open_verifier
from ppml.attest.policy import Policy
from ppml.broker.audit import AuditLog
from ppml.broker.config import BrokerConfig
from ppml.broker.nonces import NONCE_SIZE, NonceBook
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import AttestationError, PpmlError
from ppml.keys.broker_protocol import (
    MAX_KEYS_PER_REQUEST,
    b64,
    check_public_key,
    release_info,
    seal_data_key,
    unb64,
)
from ppml.keys.expiring_keys import ExpiringKeys
from ppml.keys.kms import KeyManagementService
from ppml.keys.settings import KeySettings

__all__ = ["BrokerService", "Refusal", "open_backends"]

log = logging.getLogger("ppml.broker")
_MAX_LOGGED_REFERENCE = 256


@dataclass
class Refusal(Exception):
    """A request refused as a whole: HTTP status, stable code and the reason (safe to show the caller)."""

    status: int
    code: str
    reason: str


def open_backends(entries: tuple[Mapping[str, Any], ...], *, where: str) -> dict[str, KeyManagementService]:
    """KMS backends from the configuration's ``kms`` list, by name. Secrets stay sources until used."""
    settings, names = KeySettings.from_backend_entries(entries, where=where)
    return settings.backends(names)


class BrokerService:
    """Holds the broker's state: verifiers, policies, KMS backends, nonces, key cache and audit log."""

    def __init__(self, config: BrokerConfig, *, backends: Mapping[str, KeyManagementService] | None = None) -> None:
        self.config = config
        self.policies: tuple[Policy, ...] = config.policies
        self.verifiers: dict[str, EvidenceVerifier] = {t: open_verifier(t, **s) for t, s in config.verifiers.items()}
        self.backends = dict(backends) if backends is not None else open_backends(config.kms, where=f"broker configuration {config.source}")
        self.audit = AuditLog(config.audit_log)
        self.counters: Counter[str] = Counter()
        self._counter_lock = threading.Lock()
        self.nonces = NonceBook(config.limits.nonce_lifetime)
        self.keys = ExpiringKeys()
        if "simulated" in self.verifiers:
            log.warning("SIMULATED ATTESTATION IS ENABLED: evidence of type 'simulated' proves nothing; keys "
                        "governed by a policy that allows it are released to any caller")
        if config.verification_time is not None:
            log.warning("evidence is verified as of %s, not the current time: for checking stored evidence only",
                        config.verification_time.isoformat())
        self.audit.append("start", config=config.source, policies=[p.name for p in self.policies],
                          verifiers=sorted(self.verifiers), kms=sorted(self.backends),
                          verification_time=config.verification_time.isoformat() if config.verification_time else None)

    def count(self, name: str) -> None:
        with self._counter_lock:
            self.counters[name] += 1

    def issue_nonce(self) -> tuple[bytes, int]:
        """A fresh single-use nonce and its lifetime in seconds."""
        self.count("nonces")
        return self.nonces.issue(), self.nonces.lifetime

    # -- releases -------------------------------------------------------------------------------------

    def refuse(self, caller: Mapping[str, Any], refusal: Refusal, *, evidence: dict[str, Any] | None = None,
               keys: list[str] | None = None) -> None:
        """Record a request refused as a whole: one audit entry, naming the keys it asked for."""
        named = {"keys": [k[:_MAX_LOGGED_REFERENCE] for k in keys]} if keys else {}
        self.audit.append("release", decision="deny", caller=dict(caller), evidence=evidence, policy=None,
                          **named, reason=refusal.reason, code=refusal.code)
        self.count("denied")

    def release(self, body: object, caller: Mapping[str, Any]) -> dict[str, Any]:
        """Handle one release request; returns the response body or raises :class:`Refusal` (audited)."""
        nonce, public_key, evidence, wrapped_keys = self._parse(body, caller)
        references = [self._reference(w) for w in wrapped_keys]
        if not self.nonces.consume(nonce):
            refusal = Refusal(403, "nonce", "the nonce is unknown, expired or already used (a replayed or stale "
                                            "request); ask for a new nonce and attest again")
            self.refuse(caller, refusal, evidence={"type": evidence.type, "digest": evidence.digest}, keys=references)
            raise refusal
        verified, evidence_record = self._verify(evidence, nonce, public_key, caller, references)
        answers = [self._answer(w, ref, verified, evidence_record, nonce, public_key, caller)
                   for w, ref in zip(wrapped_keys, references)]
        return {"keys": answers}

    def _reference(self, wrapped: WrappedKey) -> str:
        """``<kms>:<key>`` in the backend's canonical spelling: what policies are matched against."""
        backend = self.backends.get(wrapped.kms)
        return f"{wrapped.kms}:{backend.canonical_key(wrapped.key) if backend else wrapped.key}"

    def _parse(self, body: object, caller: Mapping[str, Any]) -> tuple[bytes, bytes, Evidence, list[WrappedKey]]:
        try:
            if not isinstance(body, Mapping):
                raise ValueError("the request body must be a JSON object")
            nonce = unb64(body.get("nonce"), what="nonce")
            public_key = unb64(body.get("public_key"), what="public_key")
            if len(nonce) != NONCE_SIZE:
                raise ValueError(f"the nonce must be {NONCE_SIZE} bytes")
            check_public_key(public_key)
            keys = body.get("keys")
            if not isinstance(keys, list) or not 0 < len(keys) <= MAX_KEYS_PER_REQUEST:
                raise ValueError(f"keys must list 1 to {MAX_KEYS_PER_REQUEST} wrapped keys")
            wrapped = [WrappedKey.from_json(k) for k in keys]
            evidence = Evidence.from_json(body.get("evidence"))
        except (ValueError, AttestationError) as exc:
            refusal = Refusal(400, "malformed", f"malformed release request: {exc}")
            self.refuse(caller, refusal)
            raise refusal from None
        return nonce, public_key, evidence, wrapped

    def _verify(self, evidence: Evidence, nonce: bytes, public_key: bytes, caller: Mapping[str, Any],
                references: list[str]) -> tuple[VerifiedEvidence, dict[str, Any]]:
        record: dict[str, Any] = {"type": evidence.type, "digest": evidence.digest}
        verifier = self.verifiers.get(evidence.type)
        try:
            if verifier is None:
                raise AttestationError(f"this broker does not accept {evidence.type} evidence "
                                       f"(it accepts: {', '.join(sorted(self.verifiers))})")
            verified = verifier.verify(evidence, at=self.config.verification_time or datetime.now(timezone.utc))
            record.update(identity=verified.identity, simulated=verified.simulated)
            if not verified.binds(nonce, public_key):
                raise AttestationError("the evidence is not bound to this request: its report data does not carry "
                                       "SHA-256(nonce || public_key) (evidence made for another request or key)")
        except AttestationError as exc:
            refusal = Refusal(403, "attestation", exc.message)
            self.refuse(caller, refusal, evidence=record, keys=references)
            raise refusal from None
        except Exception as exc:  # a verifier bug must still end in a refusal and an audit entry
            log.exception("the %s verifier failed on evidence %s", evidence.type, record["digest"])
            refusal = Refusal(403, "attestation", f"the {evidence.type} evidence could not be verified "
                                                  f"({type(exc).__name__}); see the broker's log")
            self.refuse(caller, refusal, evidence=record, keys=references)
            raise refusal from None
        return verified, record

    def _answer(self, wrapped: WrappedKey, reference: str, verified: VerifiedEvidence, record: dict[str, Any],
                nonce: bytes, public_key: bytes, caller: Mapping[str, Any]) -> dict[str, Any]:
        entry = {"caller": dict(caller), "evidence": record, "key": reference, "version": wrapped.version}
        governing = [p for p in self.policies if p.governs(reference)]
        if not governing:
            return self._deny(entry, None, f"no policy governs the key {reference}: unknown key", "unknown-key")
        # Every policy that governs the key must allow: a broad policy can never override a strict one.
        decisions = [p.evaluate(verified) for p in governing]
        names = ", ".join(p.name for p in governing)
        refusals = [d for d in decisions if not d.allowed]
        if refusals:
            return self._deny(entry, names, "; ".join(f"policy {d.policy}: {d.reason}" for d in refusals), "policy")
        backend = self.backends.get(wrapped.kms)
        if backend is None:
            return self._deny(entry, names, f"this broker holds no {wrapped.kms!r} key management service",
                              "unknown-key")
        try:
            key = self._unwrap(backend, wrapped)
        except PpmlError as exc:
            return self._deny(entry, names, f"cannot unwrap: {exc.message}", "unwrap")
        lifetime = min(d.lifetime for d in decisions)
        sealed = seal_data_key(key, public_key, release_info(nonce, wrapped))
        if verified.simulated:
            log.warning("SIMULATED attestation: released %s to %s under policy %s", reference, caller, names)
        self.audit.append("release", decision="allow", policy=names, reason="; ".join(d.reason for d in decisions),
                          lifetime=lifetime, key_id=key.key_id, **entry)
        self.count("released")
        return {"key": reference, "version": wrapped.version, "status": "released", "sealed": b64(sealed),
                "expires_in": lifetime, **({"simulated": True} if verified.simulated else {})}

    def _deny(self, entry: dict[str, Any], policy: str | None, reason: str, code: str) -> dict[str, Any]:
        self.audit.append("release", decision="deny", policy=policy, reason=reason, code=code, **entry)
        self.count("denied")
        return {"key": entry["key"], "version": entry["version"], "status": "denied", "code": code, "reason": reason}

    def _unwrap(self, backend: KeyManagementService, wrapped: WrappedKey) -> DataKey:
        """Through the key cache (``key_cache`` seconds), so KMS calls follow distinct keys."""
        def kms_unwrap() -> tuple[DataKey, float]:
            key = backend.unwrap(wrapped)
            self.count("kms_unwraps")
            return key, self.config.key_cache

        if self.config.key_cache <= 0:  # no cache: concurrent releases need not wait for each other
            return kms_unwrap()[0]
        return self.keys.get((wrapped.kms, wrapped.key, wrapped.version, wrapped.wrapped), kms_unwrap)[0]

    def close(self) -> str:
        """Forget cached keys, close the audit log; returns its head hash."""
        self.keys.clear()
        entry = self.audit.append("stop", counters=dict(self.counters))
        self.audit.close()
        return entry["hash"]
