"""Single-use, short-lived nonces: issuing stores nothing, and each one is accepted once.

A nonce is ``issued-at (8 bytes, big-endian seconds) || random (8) || HMAC-SHA256(secret, first 16)[:16]``,
32 bytes. Whoever holds the secret can check a nonce's authenticity and age without any state, so asking
for nonces cannot exhaust anything, and a nonce issued by one replica is genuine at every replica that
shares the secret. What makes a nonce single-use is the record of *used* nonces, kept until they expire:

* :class:`MemoryUsedNonces`, the default: this broker's memory, sized by a memory budget. A broker alone,
  or replicas that each only see their own nonces (session affinity), need nothing else.
* :class:`RedisUsedNonces`: Redis, shared by replicas, one atomic ``SET key 1 NX EX seconds`` per use, so
  a nonce used at one replica is refused at every other.

The secret is random per broker process group unless the configuration names a secret source shared by
the replicas (``env:``, ``file:`` or ``azure-secret:``; never a value in the file).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from typing import Any

from ppml.errors import ConfigError

__all__ = ["NONCE_SIZE", "NonceIssuer", "UsedNonces", "MemoryUsedNonces", "RedisUsedNonces", "NonceStoreError",
           "BYTES_PER_USED_NONCE", "derive_secret"]

NONCE_SIZE = 32
_CLOCK_SKEW = 2  # seconds a nonce may appear to come from the future (clock adjustments between replicas)
_MIN_SECRET_CHARACTERS = 32
# What one remembered nonce costs in MemoryUsedNonces (a 64-bit int in a set: the int, the set slot, the set's
# spare room), measured on CPython 3.11 with tracemalloc at the rates that can fill a budget (thousands per
# second: 69 to 141 bytes) and rounded up; the budget divides by it.
BYTES_PER_USED_NONCE = 160


class NonceStoreError(Exception):
    """The used-nonce record cannot take this nonce (full, or Redis unreachable): refuse the request."""


def derive_secret(text: str, *, where: str) -> bytes:
    """The HMAC key from a configured shared secret (at least 32 characters, e.g. ``openssl rand -hex 32``)."""
    if len(text) < _MIN_SECRET_CHARACTERS:
        raise ConfigError(f"{where}: the nonce secret has {len(text)} characters; at least {_MIN_SECRET_CHARACTERS} "
                          "are needed", hint="make one with: openssl rand -hex 32")
    return hashlib.sha256(b"ppml-broker nonce secret\0" + text.encode()).digest()


class NonceIssuer:
    """Issues nonces and checks, without state, that one is genuine and within ``lifetime`` seconds of issue.

    Parameters
    ----------
    lifetime
        Seconds a nonce stays usable.
    secret
        The HMAC key (32 bytes); every replica that must accept another's nonces holds the same.
    """

    def __init__(self, lifetime: int, secret: bytes) -> None:
        self.lifetime = lifetime
        self._secret = secret

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:16]

    def issue(self) -> bytes:
        body = struct.pack(">Q", int(time.time())) + os.urandom(8)
        return body + self._tag(body)

    def genuine(self, nonce: bytes) -> bool:
        """Whether ``nonce`` was issued with this secret and has not expired (constant-time tag check)."""
        if len(nonce) != NONCE_SIZE or not hmac.compare_digest(nonce[16:], self._tag(nonce[:16])):
            return False
        issued = struct.unpack(">Q", nonce[:8])[0]
        return issued - _CLOCK_SKEW <= time.time() <= issued + self.lifetime

    def expiry(self, nonce: bytes) -> int:
        """The Unix time after which ``nonce`` is refused anyway (so its use need not be remembered)."""
        return struct.unpack(">Q", nonce[:8])[0] + self.lifetime + _CLOCK_SKEW


class UsedNonces:
    """The record of used nonces: :meth:`first_use` is ``True`` once per genuine nonce, ``False`` ever after."""

    async def first_use(self, nonce: bytes, expiry: int) -> bool:
        """Record ``nonce`` as used until ``expiry`` (Unix time). Raises :class:`NonceStoreError` when it
        cannot be recorded: then the request must be refused, since forgetting would allow a replay."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections (nothing for the memory record)."""


class MemoryUsedNonces(UsedNonces):
    """Used nonces in this process's memory, at most ``memory_bytes`` worth (:data:`BYTES_PER_USED_NONCE` each).

    Nonces are kept in one set per second of issue, so expired ones go a whole second at a time. Only the
    8 random bytes are kept: nonces are checked genuine first, and two genuine nonces issued in the same
    second share their random bytes with a chance of 2**-64 per pair.
    """

    def __init__(self, memory_bytes: int) -> None:
        self.capacity = max(1, memory_bytes // BYTES_PER_USED_NONCE)
        self._by_second: dict[int, set[int]] = {}
        self._expiry: dict[int, int] = {}
        self._count = 0

    def _drop_expired(self, now: float) -> None:
        for second in [s for s, expiry in self._expiry.items() if expiry < now]:
            self._count -= len(self._by_second.pop(second))
            del self._expiry[second]

    async def first_use(self, nonce: bytes, expiry: int) -> bool:
        return self.record(nonce, expiry)

    def record(self, nonce: bytes, expiry: int) -> bool:
        """:meth:`first_use` for callers without an event loop."""
        second, random = struct.unpack(">QQ", nonce[:16])
        used = self._by_second.get(second)
        if used is not None and random in used:
            return False
        if self._count >= self.capacity:
            self._drop_expired(time.time())
            if self._count >= self.capacity:
                raise NonceStoreError(f"{self._count} nonces are in use, the most the configured memory holds "
                                      "(nonces.memory); refusing rather than forgetting one")
        if used is None:
            used = self._by_second[second] = set()
            self._expiry[second] = expiry
            if len(self._by_second) % 64 == 0:  # a second's worth of sets at a time, not on every use
                self._drop_expired(time.time())
        used.add(random)
        self._count += 1
        return True


class RedisUsedNonces(UsedNonces):
    """Used nonces in Redis, shared by broker replicas: ``SET ppml:nonce:<hex> 1 NX EX <seconds left>``.

    Parameters
    ----------
    url
        ``redis://host:port/db`` or ``rediss://`` (TLS).
    password
        The password itself (read from its source by the caller), or ``None``.
    ca
        CA bundle for ``rediss://``; default: the system's.
    """

    def __init__(self, url: str, *, password: str | None = None, ca: str | None = None, timeout: float = 2.0) -> None:
        try:
            import redis.asyncio
        except ImportError as exc:
            raise ConfigError(f"nonces.redis needs the redis package, which is not installed ({exc.name})",
                              hint="pip install 'ppml[attest]'") from None
        options: dict[str, Any] = {"password": password, "socket_timeout": timeout, "socket_connect_timeout": timeout}
        if url.startswith("rediss://") and ca:
            options["ssl_ca_certs"] = ca
        self.url = url
        self._client = redis.asyncio.Redis.from_url(url, **options)

    async def first_use(self, nonce: bytes, expiry: int) -> bool:
        seconds = max(1, int(expiry - time.time()) + 1)
        try:
            return bool(await self._client.set(b"ppml:nonce:" + nonce[:16].hex().encode(), b"1", nx=True, ex=seconds))
        except Exception as exc:  # any failure of the store must refuse, never wave the nonce through
            raise NonceStoreError(f"the used-nonce store {_without_password(self.url)} is unavailable "
                                  f"({type(exc).__name__})") from None

    async def ping(self) -> None:
        """Raise :class:`NonceStoreError` unless Redis answers (checked when the broker starts)."""
        try:
            await self._client.ping()
        except Exception as exc:
            raise NonceStoreError(f"cannot reach the used-nonce store {_without_password(self.url)}: "
                                  f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        await self._client.aclose()


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url

