"""KMS backend ``broker``: data keys released by a ppml key broker to this attested process.

The process never holds a primary key. For each wrapped data key it cannot find in its release cache it
asks the broker for a nonce, makes evidence binding the nonce and a fresh X25519 public key with its
attester (SGX via Gramine, TDX, a vTPM, or ``simulated`` for development), and opens the data key the
broker seals to that key (protocol: :mod:`ppml.keys.broker_protocol`, docs/broker.md). Released keys are
cached in this process's memory until the policy's release lifetime ends, then attested for again.

A broker that cannot be reached (refused, reset or timed-out connections, 502/504, a nonce the broker no longer
knows because it restarted) is tried again with exponential backoff and jitter for up to ``retry_for`` seconds
(60 by default), each retry logged as a warning; then the release fails with an error naming the broker, the
attempts and the last failure. A refused TLS certificate or a denial is never retried.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import ConfigError, KeyAccessError
from ppml.keys.broker_protocol import (
    NONCE_PATH,
    RELEASE_PATH,
    EphemeralKey,
    b64,
    release_info,
    unb64,
)
from ppml.keys.expiring_keys import ExpiringKeys
from ppml.keys.kms import KeyManagementService

__all__ = ["BrokerKms", "release_counters", "clear_releases", "attestation_records"]

_EXPIRY_MARGIN = 0.9  # re-attest a little before the broker's lifetime ends
_MAX_RETRIES = 5
_FIRST_BACKOFF, _MAX_BACKOFF = 0.5, 8.0  # seconds between attempts to reach an unreachable broker
_CONNECT_TIMEOUT = 10.0  # a broker that accepts no connection in 10 s is down, however long answers may take
log = logging.getLogger("ppml.keys.broker")
_RELEASES = ExpiringKeys()
_COUNTERS: Counter[str] = Counter()
# The evidence this process was released keys on, for provenance records (no key material, bounded).
_EVIDENCE: dict[str, dict[str, Any]] = {}
_EVIDENCE_LOCK = threading.Lock()
_MAX_EVIDENCE = 64


def _record_evidence(broker: str, evidence, answer: Mapping[str, Any], reference: str) -> None:
    with _EVIDENCE_LOCK:
        record = _EVIDENCE.setdefault(evidence.digest, {
            "broker": broker, "evidence_type": evidence.type, "evidence_digest": evidence.digest,
            "claims": {}, "keys": []})
        claims = answer.get("claims")
        if isinstance(claims, Mapping):
            record["claims"].update(claims)
        if reference not in record["keys"]:
            record["keys"].append(reference)
        while len(_EVIDENCE) > _MAX_EVIDENCE:
            _EVIDENCE.pop(next(iter(_EVIDENCE)))


def attestation_records() -> list[dict[str, Any]]:
    """What this process proved to key brokers to be released keys: evidence type and digest, the claims the
    broker verified (when it returned them) and the keys released, never a key."""
    with _EVIDENCE_LOCK:
        return [dict(r, keys=list(r["keys"])) for r in _EVIDENCE.values()]


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (seconds; an HTTP date counts as 1 s), at most 10."""
    try:
        return min(max(float(value or 1), 0.0), 10.0)
    except ValueError:
        return 1.0


class _Unreachable(Exception):
    """This attempt could not reach the broker, or reached a broker that has forgotten its nonce."""


def _refused_certificate(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind an httpx error, if the broker's certificate (or the handshake) was refused."""
    while exc is not None:
        if isinstance(exc, ssl.SSLError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def release_counters() -> dict[str, int]:
    """This process's counts: ``requests`` to the broker, ``keys`` released, ``cache_hits``."""
    return dict(_COUNTERS)


def clear_releases() -> None:
    """Forget every key the broker released to this process."""
    _RELEASES.clear()


class BrokerKms(KeyManagementService):
    """Unwraps data keys by attested release from a key broker.

    Parameters
    ----------
    url
        The broker, ``https://host:port`` (plain HTTP is refused).
    attester
        Name of the attester that makes this process's evidence (``sgx-gramine``, ``tdx``, ``tpm``,
        ``command``, ``simulated``), and ``attester_settings`` its settings (a mapping or JSON text).
    ca
        CA bundle (PEM file) that verifies the broker's TLS certificate; default: the system's.
    serves
        The KMS names whose wrapped keys go to the broker (default: all).
    caller
        A name recorded in the broker's audit log beside the caller's address (declared, not proven);
        default: this host's name and process id.
    timeout
        Seconds to wait for each answer (connections: at most 10).
    retry_for
        Seconds to keep retrying, with backoff, a broker that cannot be reached (default 60).
    """

    name = "broker"
    cacheable = False

    def __init__(self, url: str, *, attester: str = "", attester_settings: Mapping[str, Any] | str | None = None,
                 ca: str | None = None, serves: Sequence[str] | None = None, caller: str | None = None,
                 timeout: float = 60.0, retry_for: float = 60.0) -> None:
        if not url.startswith("https://"):
            raise ConfigError(f"the key broker URL must start with https:// (got {url!r})",
                              hint="the broker only speaks TLS; keys must never cross the network in the clear")
        if not attester:
            raise ConfigError("the broker key management service needs an attester (how this process proves what "
                              "it runs)", hint="set brokerAttester / PPML_BROKER_ATTESTER to sgx-gramine, tdx, tpm, "
                                               "command, or simulated for development")
        self.url = url.rstrip("/")
        self.attester_name = attester
        settings = json.loads(attester_settings) if isinstance(attester_settings, str) else (attester_settings or {})
        self._attester_settings = dict(settings)
        self._attester = None
        self.ca = ca
        self.serves = tuple(serves) if serves else None
        self.caller = caller
        self.timeout = timeout
        self.retry_for = retry_for
        self._client = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BrokerKms(url={self.url!r}, attester={self.attester_name!r})"

    def __reduce__(self):
        raise TypeError("BrokerKms cannot be pickled: pass its settings and open it where it is used")

    def supports(self, wrapped: WrappedKey) -> bool:
        return wrapped.kms != self.name and (self.serves is None or wrapped.kms in self.serves)

    def wrap(self, key: DataKey, key_name: str) -> WrappedKey:
        raise ConfigError("the key broker releases data keys; it does not wrap them",
                          hint="wrap data keys with the primary key's own KMS, e.g. "
                               "'ppml keys data-key --kms pkcs11 ...', and read them through the broker")

    def unwrap(self, wrapped: WrappedKey) -> DataKey:
        def release() -> tuple[DataKey, float]:
            key, lifetime = self._release_with_retry(wrapped)
            return key, lifetime * _EXPIRY_MARGIN

        # One attestation per key even when many tasks of this process ask at once.
        key, fetched = _RELEASES.get((self.url, wrapped.kms, wrapped.key, wrapped.version, wrapped.wrapped), release)
        if not fetched:
            _COUNTERS["cache_hits"] += 1
        return key

    def close(self) -> None:
        """Close the connection to the broker (released keys stay cached until they expire)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- the protocol ---------------------------------------------------------------------------------

    def _http(self):
        with self._lock:
            if self._client is None:
                import ssl

                import httpx

                verify = ssl.create_default_context(cafile=self.ca) if self.ca else True
                timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, _CONNECT_TIMEOUT))
                self._client = httpx.Client(base_url=self.url, verify=verify, timeout=timeout,
                                            headers={"User-Agent": "ppml-broker-client"})
            return self._client

    def _attester_instance(self):
        with self._lock:
            if self._attester is None:
                from ppml.attest.attester import open_attester

                self._attester = open_attester(self.attester_name, **self._attester_settings)
            return self._attester

    def _post(self, path: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        import httpx

        for attempt in range(_MAX_RETRIES + 1):
            try:
                response = self._http().post(path, json=body)
            except httpx.HTTPError as exc:
                refused = _refused_certificate(exc)
                if refused is not None:
                    raise KeyAccessError(f"cannot reach the key broker at {self.url}: its TLS certificate or handshake "
                                         f"was refused ({getattr(refused, 'verify_message', None) or refused})",
                                         hint="check that brokerCa / PPML_BROKER_CA is the CA that signed the broker's "
                                              "certificate, and this host's clock (certificates are valid only "
                                              "between their dates)") from None
                raise _Unreachable(f"{type(exc).__name__}: {exc}") from None
            if response.status_code in (429, 503) and attempt < _MAX_RETRIES:
                time.sleep(_retry_after(response.headers.get("Retry-After")))
                continue
            try:
                payload = response.json()
            except ValueError:
                payload = {}
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            if response.status_code in (502, 504) or (response.status_code == 403 and error.get("code") == "nonce"):
                # A proxy without a broker behind it, or a restarted broker that no longer knows our nonce.
                raise _Unreachable(f"{response.status_code} {error.get('message', response.reason_phrase)}")
            if response.status_code != 200:
                raise KeyAccessError(f"the key broker at {self.url} refused the request ({response.status_code} "
                                     f"{error.get('code', '')}): {error.get('message', response.reason_phrase)}",
                                     hint="the broker's audit log records the same reason")
            return payload
        raise AssertionError("unreachable")

    def _release_with_retry(self, wrapped: WrappedKey) -> tuple[DataKey, float]:
        """:meth:`_release`, attempted again with exponential backoff while the broker cannot be reached."""
        started = time.monotonic()
        delay, attempt = _FIRST_BACKOFF, 1
        while True:
            try:
                return self._release(wrapped)
            except _Unreachable as exc:
                waited = time.monotonic() - started
                if waited + delay > self.retry_for:
                    raise KeyAccessError(
                        f"cannot reach the key broker at {self.url} for {wrapped.reference}: {attempt} attempts "
                        f"in {waited:.0f} s, the last failed with {exc}",
                        hint=f"check that the broker is running and reachable from this host ({socket.gethostname()}); "
                             f"a process keeps trying for {self.retry_for:.0f} s") from None
                # Jitter: executors that lost the broker together should not come back together.
                pause = delay * random.uniform(0.5, 1.0)
                log.warning("key broker at %s: %s; attempt %d failed, retrying in %.1f s", self.url, exc, attempt,
                            pause)
                time.sleep(pause)
                delay, attempt = min(delay * 2, _MAX_BACKOFF), attempt + 1

    def _release(self, wrapped: WrappedKey) -> tuple[DataKey, float]:
        from ppml.attest.evidence import binding_digest

        reference = wrapped.reference
        nonce = unb64(self._post(NONCE_PATH, None).get("nonce"), what="the broker's nonce")
        ephemeral = EphemeralKey()
        evidence = self._attester_instance().attest(binding_digest(nonce, ephemeral.public_bytes))
        body = {"nonce": b64(nonce), "public_key": b64(ephemeral.public_bytes), "evidence": evidence.to_json(),
                "keys": [wrapped.to_json()], "caller": self.caller or f"{socket.gethostname()} pid {os.getpid()}"}
        _COUNTERS["requests"] += 1
        answers = self._post(RELEASE_PATH, body).get("keys") or [{}]
        answer = answers[0]
        if answer.get("status") != "released":
            raise KeyAccessError(f"the key broker denied {reference}: {answer.get('reason', 'no reason given')}",
                                 hint="the broker's policy for this key does not accept this workload's evidence")
        try:
            sealed = unb64(answer.get("sealed"), what="the sealed key")
            lifetime = float(answer.get("expires_in", 0))
        except (ValueError, TypeError):
            raise KeyAccessError(f"the key broker's answer for {reference} is malformed") from None
        key = ephemeral.open(sealed, release_info(nonce, wrapped), reference=reference)
        _COUNTERS["keys"] += 1
        _record_evidence(self.url, evidence, answer, reference)
        return key, lifetime
