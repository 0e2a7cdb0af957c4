"""Wrapped copies of a data key, as stored in file headers and data-key files."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["WrappedKey"]

MAX_WRAPPED_SIZE = 16 * 1024
MAX_KEY_NAME_SIZE = 1024  # a Key Vault key URL is about 100


@dataclass(frozen=True)
class WrappedKey:
    """One copy of a data key, wrapped (encrypted) by one primary key.

    Parameters
    ----------
    kms
        Registered name of the key management service that can unwrap it (``"local"``, ``"azure"``...).
    key
        The primary key's name or identifier inside that KMS.
    version
        The primary-key version that wrapped it (rotation keeps old versions able to unwrap).
    wrapped
        The wrapped key bytes; opaque outside the KMS backend.
    """

    kms: str
    key: str
    version: str
    wrapped: bytes

    def __post_init__(self) -> None:
        for field in ("kms", "key", "version"):
            if not isinstance(getattr(self, field), str):
                raise TypeError(f"WrappedKey.{field} must be a string")
        if not self.kms:
            raise ValueError("WrappedKey.kms must name a key management service")
        for field, limit in (("kms", 64), ("key", MAX_KEY_NAME_SIZE), ("version", 128)):
            if len(getattr(self, field)) > limit:
                raise ValueError(f"WrappedKey.{field} is longer than {limit} characters")
        if not isinstance(self.wrapped, bytes) or not 0 < len(self.wrapped) <= MAX_WRAPPED_SIZE:
            raise ValueError(f"WrappedKey.wrapped must be 1 to {MAX_WRAPPED_SIZE} bytes")

    @property
    def reference(self) -> str:
        """Human-readable primary-key reference, e.g. ``local:default#v2``."""
        name = f"{self.kms}:{self.key}" if self.key else self.kms
        return f"{name}#v{self.version}" if self.version else name

    def to_json(self) -> dict[str, str]:
        return {
            "kms": self.kms,
            "key": self.key,
            "version": self.version,
            "wrapped": base64.b64encode(self.wrapped).decode("ascii"),
        }

    @classmethod
    def from_json(cls, obj: object) -> WrappedKey:
        """Build from :meth:`to_json` output; raises ``ValueError`` on anything malformed."""
        if not isinstance(obj, Mapping):
            raise ValueError("a wrapped key entry must be a JSON object")
        try:
            wrapped = base64.b64decode(obj["wrapped"], validate=True)
            return cls(str(obj["kms"]), str(obj["key"]), str(obj.get("version", "")), wrapped)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"malformed wrapped key entry ({type(exc).__name__}: {exc})") from None

    def __repr__(self) -> str:
        return f"WrappedKey({self.reference}, {len(self.wrapped)} bytes)"
