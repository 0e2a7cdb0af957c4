"""The data key handle: key material that callers hold but never handle raw."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import NoReturn

__all__ = ["DataKey", "DATA_KEY_SIZE"]

DATA_KEY_SIZE = 32
_KEY_ID_LABEL = b"ppml/v1/key-id"


class DataKey:
    """Secret key material that encrypts files.

    The material is never shown by ``repr``/``str``, cannot be pickled (so it cannot travel inside a
    Spark closure or broadcast by accident) and compares in constant time. Key management services
    produce and consume it; formats use it. The only way to see the bytes is
    :meth:`unsafe_material`, whose name says what it is.

    Parameters
    ----------
    material
        The raw key bytes: 32 random bytes for ppml's own format, or BigDL's data-key string for
        its legacy format.
    """

    __slots__ = ("_material",)

    def __init__(self, material: bytes) -> None:
        if not isinstance(material, (bytes, bytearray)):
            raise TypeError(f"data key material must be bytes, not {type(material).__name__}")
        if not material:
            raise ValueError("data key material must not be empty")
        self._material = bytes(material)

    @classmethod
    def generate(cls) -> DataKey:
        """Return a new random 256-bit data key."""
        return cls(os.urandom(DATA_KEY_SIZE))

    @property
    def key_id(self) -> str:
        """A public identifier of this key (HMAC of a fixed label), safe to log and store."""
        return hmac.new(self._material, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:32]

    def __len__(self) -> int:
        return len(self._material)

    def unsafe_material(self) -> bytes:
        """Return the raw key bytes.

        Only key management backends and file formats call this. Never log, print, store or send the
        result.
        """
        return self._material

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataKey):
            return NotImplemented
        return hmac.compare_digest(self._material, other._material)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"DataKey(id={self.key_id}, material=<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "DataKey cannot be pickled: key material must not travel in closures, broadcasts or files; "
            "pass the wrapped data key and unwrap it where it is used"
        )
