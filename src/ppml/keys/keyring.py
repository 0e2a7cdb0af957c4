"""Turning wrapped keys into data keys through whichever configured KMS can unwrap them.

Unwrapped keys are cached in this process's memory only, keyed by the wrapped copy, so a job that opens
thousands of files under one data key calls its KMS once. Backends whose keys expire (the key broker's) say
so with :attr:`~ppml.keys.kms.KeyManagementService.cacheable` and are asked every time; they keep their own
cache for as long as a key is valid.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import KeyAccessError, PpmlError, WrongKeyError
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.kms import KeyManagementService, open_kms

__all__ = ["KeyRing", "clear_cache"]

_CACHE: dict[tuple[str, str, str, bytes], DataKey] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every unwrapped key held by this process."""
    with _CACHE_LOCK:
        _CACHE.clear()


class KeyRing:
    """The KMS backends a process may use, and the cache of keys they unwrapped.

    Parameters
    ----------
    backends
        Configured backends, tried first for the wrapped keys they support.
    open_backend
        Opens a backend by name with its default settings when an envelope names one that is not
        configured (for example the default local key store); return ``None`` to decline. Default:
        :func:`~ppml.keys.kms.open_kms` for ``"local"`` only.
    """

    def __init__(self, backends: Iterable[KeyManagementService] = (),
                 open_backend: Callable[[str], KeyManagementService | None] | None = None) -> None:
        self._backends = list(backends)
        self._open_backend = open_backend if open_backend is not None else _open_default
        self._opened: dict[str, KeyManagementService | None] = {}
        self._lock = threading.Lock()

    def backend(self, kms: str) -> KeyManagementService | None:
        """The configured backend named ``kms``, else one opened with defaults, else ``None``."""
        for backend in self._backends:
            if backend.name == kms:
                return backend
        with self._lock:
            if kms not in self._opened:
                self._opened[kms] = self._open_backend(kms)
            return self._opened[kms]

    def _candidates(self, wrapped: WrappedKey) -> list[KeyManagementService]:
        found = [b for b in self._backends if b.supports(wrapped)]
        if not found and (opened := self.backend(wrapped.kms)) is not None:
            found.append(opened)
        return found

    def unwrap(self, envelope: Sequence[WrappedKey], *, name: str, key_id: str | None = None) -> DataKey:
        """The data key of ``envelope``: the first copy any available backend unwraps.

        Raises :class:`~ppml.errors.KeyAccessError` listing every copy and why it could not be used.
        """
        failures: list[str] = []
        hints: list[str] = []  # what the backends that were asked and failed say to do
        for wrapped in envelope:
            cache_key = (wrapped.kms, wrapped.key, wrapped.version, wrapped.wrapped)
            with _CACHE_LOCK:
                cached = _CACHE.get(cache_key)
            if cached is not None:
                return _checked(cached, key_id, wrapped, name)
            candidates = self._candidates(wrapped)
            if not candidates:
                failures.append(f"{wrapped.reference}: no {wrapped.kms!r} key management service is configured")
            for backend in candidates:
                try:
                    key = backend.unwrap(wrapped)
                except PpmlError as exc:
                    failures.append(f"{wrapped.reference}: {exc.message}")
                    if exc.hint and exc.hint not in hints:
                        hints.append(exc.hint)
                    continue
                _checked(key, key_id, wrapped, name)
                if backend.cacheable:
                    with _CACHE_LOCK:
                        _CACHE[cache_key] = key
                return key
        if not envelope:
            failures.append("the file carries no wrapped data key")
        raise KeyAccessError(
            f"cannot unwrap the data key of {name}:\n  " + "\n  ".join(failures),
            hint="; ".join(hints) or "configure a key management service holding one of these primary keys "
                                     "(for the local key store: --keystore / PPML_KEYSTORE and PPML_KEYSTORE_PASSWORD)",
        )

    def open_data_key_file(self, path: str) -> tuple[DataKeyFile, DataKey]:
        """Load a data-key file and unwrap its key."""
        record = DataKeyFile.load(path)
        return record, self.unwrap(record.envelope, name=path, key_id=record.key_id)


def _checked(key: DataKey, key_id: str | None, wrapped: WrappedKey, name: str) -> DataKey:
    """``key``, unless the data-key file naming ``key_id`` says it should be another key."""
    if key_id is not None and key.key_id != key_id:
        raise WrongKeyError(f"{name}: the data key unwrapped from {wrapped.reference} has id {key.key_id}, but the "
                            f"file names {key_id}", hint="the data-key file was edited or assembled from two files")
    return key


def _open_default(kms: str) -> KeyManagementService | None:
    return open_kms(kms) if kms == "local" else None
