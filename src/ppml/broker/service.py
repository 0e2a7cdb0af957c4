"""The key broker's decisions, independent of HTTP: nonces, verification, policy, unwrapping, audit.

Every release request ends in one audit entry per requested key (one entry when the request itself is
refused before its keys can be read), allowed or denied, with the reason. Refusals carry no key material:
they are built from the request's public parts and the verifier's or policy's explanation.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ppml.attest.evidence import Evidence, EvidenceVerifier, VerifiedEvidence, open_verifier
from ppml.attest.policy import Policy
from ppml.broker.audit import AuditLog
from ppml.broker.config import BrokerConfig
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import AttestationError, PpmlError
from ppml.keys.broker_protocol import MAX_KEYS_PER_REQUEST, b64, release_info, seal_data_key, unb64
from ppml.keys.kms import KeyManagementService, open_kms

__all__ = ["BrokerService", "Refusal", "open_backends"]

log = logging.getLogger("ppml.broker")
NONCE_SIZE = 32
_SECRET_SETTINGS = {"local": {"passphrase"}, "pkcs11": set(), "azure": set()}


@dataclass
class Refusal(Exception):
    """A request refused as a whole: HTTP status, stable code and the reason (safe to show the caller)."""

    status: int
    code: str
    reason: str


def open_backends(entries: tuple[Mapping[str, Any], ...]) -> dict[str, KeyManagementService]:
    """KMS backends from the configuration's ``kms`` list, by name. Secrets stay sources until used."""
    from ppml.keys.settings import read_secret_source

    backends: dict[str, KeyManagementService] = {}
    for entry in entries:
        settings = {k: v for k, v in entry.items() if k != "backend"}
        name = str(entry["backend"])
        for secret in _SECRET_SETTINGS.get(name, set()) & set(settings):
            source = settings[secret]
            settings[secret] = lambda source=source, secret=secret: read_secret_source(source, what=f"{name} {secret}")
        backend = open_kms(name, **settings)
        backends[backend.name] = backend
    return backends


class BrokerService:
    """Holds the broker's state: verifiers, policies, KMS backends, nonces, key cache and audit log."""

    def __init__(self, config: BrokerConfig, *, backends: Mapping[str, KeyManagementService] | None = None) -> None:
        self.config = config
        self.policies: tuple[Policy, ...] = config.policies
        self.verifiers: dict[str, EvidenceVerifier] = {t: open_verifier(t, **s) for t, s in config.verifiers.items()}
        self.backends = dict(backends) if backends is not None else open_backends(config.kms)
        self.audit = AuditLog(config.audit_log)
        self.counters: Counter[str] = Counter()
        self._nonces: dict[bytes, float] = {}
        self._nonce_lock = threading.Lock()
        self._cache: dict[tuple[str, str, str, bytes], tuple[DataKey, float]] = {}
        self._cache_lock = threading.Lock()
        self._unwrap_locks: dict[tuple[str, str, str, bytes], threading.Lock] = {}
        if "simulated" in self.verifiers:
            log.warning("SIMULATED ATTESTATION IS ENABLED: evidence of type 'simulated' proves nothing; keys "
                        "governed by a policy that allows it are released to any caller")
        if config.verification_time is not None:
            log.warning("evidence is verified as of %s, not the current time: for checking stored evidence only",
                        config.verification_time.isoformat())
        self.audit.append("start", config=config.source, policies=[p.name for p in self.policies],
                          verifiers=sorted(self.verifiers), kms=sorted(self.backends))

    # -- nonces ---------------------------------------------------------------------------------------

    def issue_nonce(self) -> tuple[bytes, int]:
        """A fresh single-use nonce and its lifetime in seconds."""
        lifetime, now = self.config.limits.nonce_lifetime, time.monotonic()
        nonce = os.urandom(NONCE_SIZE)
        with self._nonce_lock:
            if len(self._nonces) >= self.config.limits.max_outstanding_nonces:
                for stale in [n for n, expiry in self._nonces.items() if expiry <= now]:
                    del self._nonces[stale]
                if len(self._nonces) >= self.config.limits.max_outstanding_nonces:
                    raise Refusal(503, "busy", "too many outstanding nonces; retry shortly")
            self._nonces[nonce] = now + lifetime
        self.counters["nonces"] += 1
        return nonce, lifetime

    def _consume_nonce(self, nonce: bytes) -> bool:
        with self._nonce_lock:
            expiry = self._nonces.pop(nonce, None)
        return expiry is not None and expiry > time.monotonic()

    # -- releases -------------------------------------------------------------------------------------

    def refuse(self, caller: Mapping[str, Any], refusal: Refusal, *, evidence: dict[str, Any] | None = None,
               keys: list[str] | None = None) -> None:
        """Record a refused request (one entry per named key, else one) and count it."""
        for key in keys or [None]:
            self.audit.append("release", decision="deny", caller=dict(caller), evidence=evidence, policy=None,
                              key=key, reason=refusal.reason, code=refusal.code)
            self.counters["denied"] += 1

    def release(self, body: object, caller: Mapping[str, Any]) -> dict[str, Any]:
        """Handle one release request; returns the response body or raises :class:`Refusal` (audited)."""
        nonce, public_key, evidence, wrapped_keys = self._parse(body, caller)
        references = [f"{w.kms}:{w.key}" for w in wrapped_keys]
        if not self._consume_nonce(nonce):
            refusal = Refusal(403, "nonce", "the nonce is unknown, expired or already used (a replayed or stale "
                                            "request); ask for a new nonce and attest again")
            self.refuse(caller, refusal, evidence={"type": evidence.type, "digest": evidence.digest}, keys=references)
            raise refusal
        verified, evidence_record = self._verify(evidence, nonce, public_key, caller, references)
        answers = [self._answer(w, ref, verified, evidence_record, nonce, public_key, caller)
                   for w, ref in zip(wrapped_keys, references)]
        return {"keys": answers}

    def _parse(self, body: object, caller: Mapping[str, Any]) -> tuple[bytes, bytes, Evidence, list[WrappedKey]]:
        try:
            if not isinstance(body, Mapping):
                raise ValueError("the request body must be a JSON object")
            nonce = unb64(body.get("nonce"), what="nonce")
            public_key = unb64(body.get("public_key"), what="public_key")
            if len(nonce) != NONCE_SIZE or len(public_key) != 32:
                raise ValueError("nonce and public_key must be 32 bytes each (public_key: raw X25519)")
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
        policy = next((p for p in self.policies if p.governs(reference)), None)
        entry = {"caller": dict(caller), "evidence": record, "key": reference, "version": wrapped.version}
        if policy is None:
            reason = f"no policy governs the key {reference}: unknown key"
            return self._deny(entry, None, reason, "unknown-key")
        decision = policy.evaluate(verified)
        if not decision.allowed:
            return self._deny(entry, policy.name, decision.reason, "policy")
        backend = self.backends.get(wrapped.kms)
        if backend is None:
            return self._deny(entry, policy.name, f"this broker holds no {wrapped.kms!r} key management service",
                              "unknown-key")
        try:
            key = self._unwrap(backend, wrapped, policy.lifetime)
        except PpmlError as exc:
            return self._deny(entry, policy.name, f"cannot unwrap: {exc.message}", "unwrap")
        if verified.simulated:
            log.warning("SIMULATED attestation: released %s to %s under policy %s", reference, caller, policy.name)
        self.audit.append("release", decision="allow", policy=policy.name, reason=decision.reason,
                          lifetime=decision.lifetime, key_id=key.key_id, **entry)
        self.counters["released"] += 1
        sealed = seal_data_key(key, public_key, release_info(nonce, wrapped))
        return {"key": reference, "version": wrapped.version, "status": "released", "sealed": b64(sealed),
                "expires_in": decision.lifetime, **({"simulated": True} if verified.simulated else {})}

    def _deny(self, entry: dict[str, Any], policy: str | None, reason: str, code: str) -> dict[str, Any]:
        self.audit.append("release", decision="deny", policy=policy, reason=reason, code=code, **entry)
        self.counters["denied"] += 1
        return {"key": entry["key"], "version": entry["version"], "status": "denied", "code": code, "reason": reason}

    def _unwrap(self, backend: KeyManagementService, wrapped: WrappedKey, lifetime: int) -> DataKey:
        cache_key = (wrapped.kms, wrapped.key, wrapped.version, wrapped.wrapped)
        with self._cache_lock:
            lock = self._unwrap_locks.setdefault(cache_key, threading.Lock())
        with lock:
            now = time.monotonic()
            with self._cache_lock:
                cached = self._cache.get(cache_key)
            if cached is not None and cached[1] > now:
                return cached[0]
            key = backend.unwrap(wrapped)
            self.counters["kms_unwraps"] += 1
            with self._cache_lock:
                self._cache[cache_key] = (key, now + self.config.key_cache)
            return key

    def close(self) -> str:
        """Forget cached keys and outstanding nonces, close the audit log; returns its head hash."""
        with self._cache_lock:
            self._cache.clear()
            self._unwrap_locks.clear()
        with self._nonce_lock:
            self._nonces.clear()
        entry = self.audit.append("stop", counters=dict(self.counters))
        self.audit.close()
        return entry["hash"]
