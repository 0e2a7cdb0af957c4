"""The key broker's decisions, independent of HTTP: nonces, verification, policy, unwrapping, sealing.

A release request ends in audit entries with their reasons: one per requested key once the evidence has
verified (allowed or denied, each on its own), else one for the whole refused request. The ledger
(:mod:`ppml.broker.ledger`) records the nonce as used and makes the entries durable before any sealed key
is answered. What a refused request records is bounded (at most 8 key names of 128 characters, a reason of
512), and such entries are budgeted per client, so a request costs its sender as much as the broker.

Refusals carry no key material. The caller learns which requirement fell short, not the values a policy
expects, the broker's paths or its verifiers' settings; the audit entry has the full reason.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from ppml.attest.evidence import Evidence, EvidenceVerifier, VerifiedEvidence
from ppml.attest.policy import Policy
from ppml.broker.config import BrokerConfig
from ppml.broker.nonces import NONCE_SIZE, NonceIssuer, NonceStoreError
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

__all__ = ["BrokerService", "Refusal", "LedgerHandle", "client_group"]

log = logging.getLogger("ppml.broker")
_MAX_LISTED_KEYS = 8
_MAX_REFERENCE = 128
_MAX_REASON = 512
_MAX_CALLER_NAME = 128


@dataclass
class Refusal(Exception):
    """A request refused as a whole: HTTP status, stable code, the reason for the audit log and the one the
    caller sees (the same unless the reason names the broker's configuration)."""

    status: int
    code: str
    reason: str
    public: str | None = None

    @property
    def shown(self) -> str:
        return self.public or self.reason


class LedgerHandle(Protocol):
    """What the service needs of the ledger: :class:`~ppml.broker.ledger.Ledger` or its remote handle."""

    async def release(self, nonce: bytes, expiry: int, entries: list[dict[str, Any]], replay: dict[str, Any],
                      client: str, *, whole: bool) -> bool: ...

    async def refuse(self, entry: dict[str, Any], client: str) -> None: ...

    async def totals(self, add: Mapping[str, int] | None = None) -> dict[str, int]: ...


@functools.lru_cache(maxsize=4096)
def client_group(address: str) -> str:
    """The unit of per-client limits: an IPv4 address, or an IPv6 /64 (one host can use a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


def caller_of(address: str, name: object = None) -> dict[str, Any]:
    """The ``caller`` of an audit entry: the address, and the name the client declared (not proven)."""
    caller: dict[str, Any] = {"address": address}
    if isinstance(name, str) and name:
        caller["declared_name"] = name[:_MAX_CALLER_NAME]
    return caller


def _bounded(references: list[str]) -> dict[str, Any]:
    listed = {"keys": [r[:_MAX_REFERENCE] for r in references[:_MAX_LISTED_KEYS]]}
    return {**listed, "keys_total": len(references)} if len(references) > _MAX_LISTED_KEYS else listed


class BrokerService:
    """A worker's state: verifiers, policies, KMS backends, the nonce issuer, the key cache and its counts.

    Parameters
    ----------
    config
        The broker configuration.
    backends
        The KMS backends by name.
    issuer
        Issues and checks nonces (its secret is shared by the replica's workers, or all replicas).
    ledger
        Records used nonces and audit entries (in this process or the supervising one).
    withheld
        Wrapped keys never released whatever the policies say: the broker's own audit key.
    worker
        This process's index among the replica's workers, recorded in its entries; ``None`` for a replica of
        one process.
    """

    def __init__(self, config: BrokerConfig, *, backends: Mapping[str, KeyManagementService],
                 verifiers: Mapping[str, EvidenceVerifier], issuer: NonceIssuer, ledger: LedgerHandle,
                 withheld: frozenset[bytes] = frozenset(), worker: int | None = None) -> None:
        self.config = config
        self.policies: tuple[Policy, ...] = config.policies
        self.verifiers = dict(verifiers)
        self.backends = dict(backends)
        self.nonces = issuer
        self.ledger = ledger
        self.withheld = withheld
        self._served_by = {} if worker is None else {"worker": worker}
        self.keys = ExpiringKeys()
        self._counts: Counter[str] = Counter()  # this worker's, not yet added to the replica's

    def issue_nonce(self) -> tuple[bytes, int]:
        """A fresh single-use nonce and its lifetime in seconds."""
        self._counts["nonces"] += 1
        return self.nonces.issue(), self.nonces.lifetime

    async def counters(self) -> dict[str, int]:
        """The replica's counters, this worker's counts added to them first."""
        counts, self._counts = self._counts, Counter()
        return await self.ledger.totals(counts)

    # -- releases -------------------------------------------------------------------------------------

    async def refuse(self, caller: Mapping[str, Any], refusal: Refusal, *, evidence: dict[str, Any] | None = None,
                     keys: list[str] | None = None) -> None:
        """Record a request refused before it reached a nonce (malformed, too large, rate-limited, a nonce
        that is not genuine): one bounded entry, within the client's budget."""
        await self.ledger.refuse(self._whole(caller, refusal, evidence, keys), client_group(caller["address"]))

    def _whole(self, caller: Mapping[str, Any], refusal: Refusal, evidence: dict[str, Any] | None,
               keys: list[str] | None) -> dict[str, Any]:
        return {"event": "release", "decision": "deny", "caller": dict(caller), "evidence": evidence,
                "policy": None, **(_bounded(keys) if keys else {}), "reason": refusal.reason[:_MAX_REASON],
                "code": refusal.code, **self._served_by}

    async def release(self, body: object, caller: Mapping[str, Any]) -> dict[str, Any]:
        """Handle one release request; returns the response body or raises :class:`Refusal` (audited)."""
        client = client_group(caller["address"])
        try:
            nonce, public_key, evidence, wrapped_keys = self._parse(body)
        except Refusal as refusal:
            await self.refuse(caller, refusal)
            raise
        references = [self._reference(w) for w in wrapped_keys]
        record = {"type": evidence.type[:64], "digest": evidence.digest}
        if not self.nonces.genuine(nonce):
            refusal = Refusal(403, "nonce", "the nonce is unknown or expired (made up, from another broker, or "
                                            "stale); ask for a new nonce and attest again")
            await self.refuse(caller, refusal, evidence=record, keys=references)
            raise refusal
        replayed = Refusal(403, "nonce", "the nonce was already used (a replayed request); ask for a new nonce "
                                         "and attest again")
        replay = self._whole(caller, replayed, record, references)
        try:
            verified = self._verify(evidence, nonce, public_key, record)
        except Refusal as refusal:
            await self._commit(nonce, [self._whole(caller, refusal, record, references)], replay, client, whole=True)
            raise
        entries, answers = [], []
        for wrapped, reference in zip(wrapped_keys, references, strict=True):
            entry, answer = await self._answer(wrapped, reference, verified, record, nonce, public_key, caller)
            entries.append(entry)
            answers.append(answer)
        await self._commit(nonce, entries, replay, client, whole=False)
        if verified.simulated:
            log.warning("SIMULATED attestation: released keys to %s", dict(caller))
        return {"keys": answers}

    async def _commit(self, nonce: bytes, entries: list[dict[str, Any]], replay: dict[str, Any], client: str, *,
                      whole: bool) -> None:
        try:
            first = await self.ledger.release(nonce, self.nonces.expiry(nonce), entries, replay, client, whole=whole)
        except NonceStoreError as exc:
            # Not recorded as used, so it must not be honoured; the refusal is recorded (budgeted) if possible.
            refusal = Refusal(503, "unavailable", str(exc),
                              "the broker cannot record the nonce's use right now; try again shortly")
            await self.ledger.refuse({**replay, "reason": refusal.reason[:_MAX_REASON], "code": refusal.code}, client)
            raise refusal from None
        if not first:
            raise Refusal(403, "nonce", replay["reason"])

    def _reference(self, wrapped: WrappedKey) -> str:
        """``<kms>:<key>`` in the backend's canonical spelling: what policies are matched against."""
        backend = self.backends.get(wrapped.kms)
        return f"{wrapped.kms}:{backend.canonical_key(wrapped.key) if backend else wrapped.key}"

    def _parse(self, body: object) -> tuple[bytes, bytes, Evidence, list[WrappedKey]]:
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
            evidence.digest  # noqa: B018 - evidence that is not JSON (NaN aside) is malformed, found here
        except (ValueError, TypeError, AttestationError) as exc:
            raise Refusal(400, "malformed", f"malformed release request: {str(exc)[:_MAX_REASON]}") from None
        return nonce, public_key, evidence, wrapped

    def _verify(self, evidence: Evidence, nonce: bytes, public_key: bytes,
                record: dict[str, Any]) -> VerifiedEvidence:
        verifier = self.verifiers.get(evidence.type)
        not_verified = (f"the {evidence.type[:64]} evidence did not verify; the broker's audit log records why "
                        f"(evidence {record['digest'][:16]})")
        try:
            if verifier is None:
                raise Refusal(403, "attestation", f"this broker does not accept {evidence.type[:64]} evidence "
                                                  f"(it accepts: {', '.join(sorted(self.verifiers))})",
                              f"this broker does not accept {evidence.type[:64]} evidence")
            verified = verifier.verify(evidence, at=self.config.verification_time or datetime.now(timezone.utc))
            record.update(identity=verified.identity, simulated=verified.simulated)
            if not verified.binds(nonce, public_key):
                raise Refusal(403, "attestation", "the evidence is not bound to this request: its report data does "
                                                  "not carry SHA-256(nonce || public_key) (evidence made for another "
                                                  "request or key)")
        except AttestationError as exc:
            raise Refusal(403, "attestation", exc.message, not_verified) from None
        except Refusal:
            raise
        except Exception as exc:  # a verifier bug must still end in a refusal and an audit entry
            log.exception("the %s verifier failed on evidence %s", evidence.type, record["digest"])
            raise Refusal(403, "attestation", f"the {evidence.type} evidence could not be verified "
                                              f"({type(exc).__name__}); see the broker's log", not_verified) from None
        return verified

    async def _answer(self, wrapped: WrappedKey, reference: str, verified: VerifiedEvidence, record: dict[str, Any],
                      nonce: bytes, public_key: bytes, caller: Mapping[str, Any]) -> tuple[dict, dict]:
        entry = {"event": "release", "caller": dict(caller), "evidence": record, "key": reference[:_MAX_REFERENCE],
                 "version": wrapped.version[:_MAX_REFERENCE], **self._served_by}
        answer = {"key": reference, "version": wrapped.version}
        if wrapped.wrapped in self.withheld:
            reason = f"{reference} wraps the broker's own audit key, which is never released"
            return self._deny(entry, answer, None, reason, reason, "withheld")
        governing = [p for p in self.policies if p.governs(reference)]
        if not governing:
            reason = f"no policy governs the key {reference}: unknown key"
            return self._deny(entry, answer, None, reason, reason, "unknown-key")
        # Every policy that governs the key must allow: a broad policy can never override a strict one.
        decisions = [p.evaluate(verified) for p in governing]
        names = ", ".join(p.name for p in governing)
        refusals = [d for d in decisions if not d.allowed]
        if refusals:
            return self._deny(entry, answer, names, "; ".join(f"policy {d.policy}: {d.reason}" for d in refusals),
                              "; ".join(f"policy {d.policy}: {d.public_reason}" for d in refusals), "policy")
        backend = self.backends.get(wrapped.kms)
        if backend is None:
            reason = f"this broker holds no {wrapped.kms!r} key management service"
            return self._deny(entry, answer, names, reason, reason, "unknown-key")
        try:
            key = await self._unwrap(backend, wrapped)
        except PpmlError as exc:
            return self._deny(entry, answer, names, f"cannot unwrap: {exc.message}",
                              "the broker cannot unwrap this key; its audit log records why", "unwrap")
        lifetime = min(d.lifetime for d in decisions)
        sealed = seal_data_key(key, public_key, release_info(nonce, wrapped))
        entry.update(decision="allow", policy=names, reason="; ".join(d.reason for d in decisions), lifetime=lifetime,
                     key_id=key.key_id)
        # The caller's own verified values that the policies required, for its provenance records: they
        # matched, so they tell it nothing about the policy it did not already prove.
        claims = {name: value for d in decisions for name, value in d.claims.items()}
        answer.update(status="released", sealed=b64(sealed), expires_in=lifetime, claims=claims,
                      **({"simulated": True} if verified.simulated else {}))
        return entry, answer

    @staticmethod
    def _deny(entry: dict[str, Any], answer: dict[str, Any], policy: str | None, reason: str, public: str,
              code: str) -> tuple[dict, dict]:
        entry.update(decision="deny", policy=policy, reason=reason[:_MAX_REASON], code=code)
        answer.update(status="denied", code=code, reason=public)
        return entry, answer

    async def _unwrap(self, backend: KeyManagementService, wrapped: WrappedKey) -> DataKey:
        """Through the key cache (``key_cache`` seconds), so KMS calls follow distinct keys. A cached key is
        answered at once; the KMS is called in a thread, since it may wait on a network or an HSM."""
        cache_key = (wrapped.kms, wrapped.key, wrapped.version, wrapped.wrapped)
        held = self.keys.peek(cache_key)
        if held is not None:
            return held

        def kms_unwrap() -> tuple[DataKey, float]:
            key = backend.unwrap(wrapped)
            self._counts["kms_unwraps"] += 1
            return key, self.config.key_cache

        if self.config.key_cache <= 0:  # no cache: concurrent releases need not wait for each other
            return (await asyncio.to_thread(kms_unwrap))[0]
        return (await asyncio.to_thread(self.keys.get, cache_key, kms_unwrap))[0]

    def close(self) -> None:
        """Forget cached keys."""
        self.keys.clear()
