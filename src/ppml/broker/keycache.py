"""Unwrapped data keys held by the broker for a short time, so that KMS calls follow distinct keys."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey

__all__ = ["KeyCache"]

_CacheKey = tuple[str, str, str, bytes]


class KeyCache:
    """Keys unwrapped in the last ``seconds`` (nothing is kept when it is 0); expired keys are dropped on
    every lookup. One unwrap at a time per wrapped key, so a burst of releases makes one KMS call."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._keys: dict[_CacheKey, tuple[DataKey, float]] = {}
        self._locks: dict[_CacheKey, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, wrapped: WrappedKey, unwrap: Callable[[WrappedKey], DataKey]) -> DataKey:
        """The cached key of ``wrapped``, else ``unwrap(wrapped)`` (kept for ``seconds``)."""
        if self.seconds <= 0:
            return unwrap(wrapped)
        cache_key = (wrapped.kms, wrapped.key, wrapped.version, wrapped.wrapped)
        with self._lock:
            self._drop_expired(time.monotonic())
            lock = self._locks.setdefault(cache_key, threading.Lock())
        with lock:
            with self._lock:
                cached = self._keys.get(cache_key)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            key = unwrap(wrapped)
            with self._lock:
                self._keys[cache_key] = (key, time.monotonic() + self.seconds)
            return key

    def _drop_expired(self, now: float) -> None:
        for cache_key in [k for k, (_, expiry) in self._keys.items() if expiry <= now]:
            del self._keys[cache_key]
        for cache_key in [k for k, lock in self._locks.items() if k not in self._keys and not lock.locked()]:
            del self._locks[cache_key]

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()
            self._locks.clear()
