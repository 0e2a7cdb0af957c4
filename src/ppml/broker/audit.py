"""The broker's tamper-evident audit log: hash-chained JSON lines.

Each line is one JSON object with ``seq`` (0, 1, 2, ...), ``time``, the event's fields, ``prev`` (the
``hash`` of the line before, 64 zeros for the first) and ``hash`` = SHA-256 of the canonical JSON of the
entry without ``hash``. Editing a line breaks its hash; dropping, inserting or reordering lines breaks the
``seq``/``prev`` chain. Cutting lines off the end leaves a valid shorter chain: compare the last hash with
one recorded elsewhere (``ppml broker audit verify --expect-head``; the broker logs it at shutdown).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ppml.errors import ConfigError, IntegrityError, NotFoundError

__all__ = ["AuditLog", "AuditReport", "verify_audit_log", "GENESIS"]

GENESIS = "0" * 64


def _entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"audit log {path}, line {number}"
            if not raw.endswith(b"\n"):
                raise IntegrityError(f"{where}: incomplete (cut off, or the broker stopped while writing it)",
                                     path=str(path), hint="keep a copy, then remove the incomplete last line "
                                                          "to let the broker continue the log")
            try:
                entry = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                raise IntegrityError(f"{where}: not a JSON object (edited or truncated)", path=str(path)) from None
            # Byte for byte what the broker wrote: no duplicate keys or other text that parses the same.
            if not isinstance(entry, dict) or raw[:-1] != _canonical(entry):
                raise IntegrityError(f"{where}: not in the broker's canonical form (edited)", path=str(path))
            yield number, entry


@dataclass(frozen=True)
class AuditReport:
    entries: int
    head: str
    allowed: int
    denied: int

    def to_json(self) -> dict[str, Any]:
        return {"entries": self.entries, "head": self.head, "allowed": self.allowed, "denied": self.denied}


def verify_audit_log(path: str | Path, *, expect_head: str | None = None) -> AuditReport:
    """Check every line's hash and the chain; raises IntegrityError at the first line that breaks it."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"audit log {path} does not exist")
    prev, count, allowed, denied = GENESIS, 0, 0, 0
    for number, entry in _lines(path):
        where = f"audit log {path}, line {number}"
        if entry.get("seq") != count:
            raise IntegrityError(f"{where}: sequence number {entry.get('seq')} where {count} was expected "
                                 "(a line was dropped, inserted or moved)", path=str(path))
        if not hmac.compare_digest(str(entry.get("prev", "")), prev):
            raise IntegrityError(f"{where}: does not follow the line before it (a line was dropped, inserted or "
                                 "moved)", path=str(path))
        if not hmac.compare_digest(str(entry.get("hash", "")), _entry_hash(entry)):
            raise IntegrityError(f"{where}: its content does not match its hash (the line was edited)", path=str(path))
        prev, count = entry["hash"], count + 1
        allowed += entry.get("decision") == "allow"
        denied += entry.get("decision") == "deny"
    if expect_head is not None and not hmac.compare_digest(prev, expect_head.lower()):
        raise IntegrityError(f"audit log {path}: ends at {prev[:16]}…, not at the expected head {expect_head[:16]}… "
                             "(lines were cut off the end, or it is another log)", path=str(path))
    return AuditReport(count, prev, allowed, denied)


class AuditLog:
    """Appends chained entries to a JSON-lines file (created 0600), one ``write`` + ``fsync`` per entry.

    Opening an existing log locks it (one writer) and checks its whole chain first: a broker never extends a
    log it cannot vouch for.
    """

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open the audit log {self.path}: {exc.strerror}") from None
        try:
            # Two writers would fork the chain: the second broker on the same log is refused.
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            report = verify_audit_log(self.path)
        except BlockingIOError:
            os.close(self._fd)
            raise ConfigError(f"the audit log {self.path} is in use by another process (another broker?)",
                              hint="give each broker its own audit_log") from None
        except BaseException:
            os.close(self._fd)
            raise
        self._seq, self._head = report.entries, report.head

    @property
    def head(self) -> str:
        """The hash of the last entry: record it elsewhere to detect lines cut off the end."""
        return self._head

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one entry; returns it as written."""
        with self._lock:
            entry = {"seq": self._seq, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                     "event": event, **fields, "prev": self._head}
            entry["hash"] = _entry_hash(entry)
            line = memoryview(_canonical(entry) + b"\n")
            while line:
                line = line[os.write(self._fd, line):]
            if self._fsync:
                os.fsync(self._fd)
            self._seq, self._head = self._seq + 1, entry["hash"]
            return entry

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
