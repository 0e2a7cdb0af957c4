"""Unwrapped data keys kept in memory until each one expires, fetched once per key however many ask.

The key broker keeps keys it unwrapped for ``key_cache`` seconds, so KMS calls follow distinct keys; a
broker client keeps keys released to it until their release lifetime ends, so attestations follow
processes and keys, not tasks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

from ppml.crypto.datakey import DataKey

__all__ = ["ExpiringKeys"]


class ExpiringKeys:
    """Keys by cache key, each until its own expiry; expired keys are dropped on every lookup.

    ``get`` runs one ``fetch`` at a time per cache key, so a burst of callers wanting one key makes one
    KMS call or one attestation; the others wait and take its result.
    """

    def __init__(self) -> None:
        self._keys: dict[Hashable, tuple[DataKey, float]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, cache_key: Hashable, fetch: Callable[[], tuple[DataKey, float]]) -> tuple[DataKey, bool]:
        """The key held for ``cache_key``, else ``fetch()`` → ``(key, seconds to keep it)``; and whether
        ``fetch`` ran. Nothing is kept for ``seconds <= 0``."""
        with self._lock:
            self._drop_expired(time.monotonic())
            lock = self._locks.setdefault(cache_key, threading.Lock())
        with lock:
            with self._lock:
                held = self._keys.get(cache_key)
            if held is not None and held[1] > time.monotonic():
                return held[0], False
            key, seconds = fetch()
            if seconds > 0:
                with self._lock:
                    self._keys[cache_key] = (key, time.monotonic() + seconds)
            return key, True

    def peek(self, cache_key: Hashable) -> DataKey | None:
        """The key held for ``cache_key`` if it has not expired, without waiting for a fetch in progress."""
        held = self._keys.get(cache_key)
        return held[0] if held is not None and held[1] > time.monotonic() else None

    def _drop_expired(self, now: float) -> None:
        for cache_key in [k for k, (_, expiry) in self._keys.items() if expiry <= now]:
            del self._keys[cache_key]
        for cache_key in [k for k, lock in self._locks.items() if k not in self._keys and not lock.locked()]:
            del self._locks[cache_key]

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()
            self._locks.clear()
