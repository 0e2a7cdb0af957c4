"""Data-key files: a data key's wrapped copies and its public id, as JSON (mode 0600).

::

    {"schema": "ppml.data-key/1", "key_id": "…", "created": "2026-…",
     "envelope": [{"kms": "local", "key": "default", "version": "1", "wrapped": "<base64>"}]}

The file never holds plaintext key material: opening it needs one of the KMSs in the envelope.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ppml.crypto.envelope import WrappedKey
from ppml.errors import ConfigError, NotFoundError
from ppml.keys import secure_files

__all__ = ["DataKeyFile", "SCHEMA"]

SCHEMA = "ppml.data-key/1"
MAX_SIZE = 1024 * 1024


@dataclass(frozen=True)
class DataKeyFile:
    """The wrapped copies of one data key, plus its public ``key_id`` (see :attr:`DataKey.key_id`)."""

    key_id: str
    envelope: tuple[WrappedKey, ...]
    created: str = ""

    def to_json(self) -> dict[str, object]:
        return {"schema": SCHEMA, "key_id": self.key_id, "created": self.created,
                "envelope": [w.to_json() for w in self.envelope]}

    def with_envelope(self, envelope: Sequence[WrappedKey]) -> DataKeyFile:
        return DataKeyFile(self.key_id, tuple(envelope), self.created)

    def save(self, path: str | os.PathLike, *, replace: bool = False) -> None:
        """Write the file with mode 0600; refuses to overwrite unless ``replace``."""
        secure_files.write_private(path, (json.dumps(self.to_json(), indent=2) + "\n").encode(), replace=replace)

    @classmethod
    def new(cls, key_id: str, envelope: Sequence[WrappedKey]) -> DataKeyFile:
        created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        return cls(key_id, tuple(envelope), created)

    @classmethod
    def parse(cls, data: bytes, *, name: str) -> DataKeyFile:
        try:
            doc = json.loads(data)
            if doc.get("schema") != SCHEMA:
                raise ValueError(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
            envelope = tuple(WrappedKey.from_json(e) for e in doc["envelope"])
            if not envelope:
                raise ValueError("the envelope is empty")
            return cls(str(doc["key_id"]), envelope, str(doc.get("created", "")))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ConfigError(f"{name} is not a ppml data-key file ({exc})",
                              hint="create one with 'ppml keys data-key --out FILE'") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> DataKeyFile:
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"data-key file {path} does not exist",
                                hint="create one with 'ppml keys data-key --out FILE'")
        secure_files.check_private(path, what="data-key file")
        if path.stat().st_size > MAX_SIZE:
            raise ConfigError(f"{path} is too large to be a data-key file")
        return cls.parse(path.read_bytes(), name=str(path))
