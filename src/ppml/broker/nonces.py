"""Single-use, short-lived nonces that cost the broker nothing to hand out.

A nonce is ``issued-at (8 bytes, big-endian seconds) || random (8) || HMAC-SHA256(secret, first 16)[:16]``,
32 bytes. The broker keeps no list of nonces it handed out, so asking for nonces cannot exhaust anything;
it remembers only nonces that were *used*, until they expire, which is what makes each one single-use. The
secret lives in memory only: nonces do not survive a restart, and replicas do not accept each other's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
import time

__all__ = ["NonceBook", "NONCE_SIZE"]

NONCE_SIZE = 32
_CLOCK_SKEW = 2  # seconds a nonce may appear to come from the future (clock adjustments)


class NonceBook:
    """Issues nonces and accepts each one once, within ``lifetime`` seconds of issue."""

    def __init__(self, lifetime: int, *, max_used: int = 200_000) -> None:
        self.lifetime = lifetime
        self._secret = os.urandom(32)
        self._used: dict[bytes, float] = {}
        self._max_used = max_used
        self._next_prune = 1024
        self._lock = threading.Lock()

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:16]

    def issue(self) -> bytes:
        body = struct.pack(">Q", int(time.time())) + os.urandom(8)
        return body + self._tag(body)

    def consume(self, nonce: bytes) -> bool:
        """``True`` the first time a genuine, unexpired nonce is presented; ``False`` ever after."""
        if len(nonce) != NONCE_SIZE or not hmac.compare_digest(nonce[16:], self._tag(nonce[:16])):
            return False
        issued = struct.unpack(">Q", nonce[:8])[0]
        now = time.time()
        if not issued - _CLOCK_SKEW <= now <= issued + self.lifetime:
            return False
        with self._lock:
            if nonce in self._used:
                return False
            if len(self._used) >= self._next_prune:
                self._used = {n: expiry for n, expiry in self._used.items() if expiry > now}
                self._next_prune = max(1024, 2 * len(self._used))
            if len(self._used) >= self._max_used:
                return False  # refuse rather than forget: forgetting would allow a replay
            self._used[nonce] = issued + self.lifetime + _CLOCK_SKEW
        return True
