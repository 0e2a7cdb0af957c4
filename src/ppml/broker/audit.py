"""The broker's audit log: hash-chained JSON lines, each signed with the broker's audit key.

Each line is one JSON object in canonical form (sorted keys, no spaces) with ``seq`` (0, 1, 2, ...),
``time``, ``event`` and the event's fields, ``prev`` (the ``hash`` of the line before, 64 zeros for the
first) and ``hash`` (SHA-256 of the canonical JSON without ``hash`` and ``sig``). The last line of each
write (the broker writes entries in groups, :mod:`ppml.broker.ledger`) also carries ``sig``: the Ed25519
signature, by the audit key (:mod:`ppml.broker.audit_key`), of ``"ppml-audit/2" 0x00 || hash``. Since each
hash covers the one before, that signature vouches for its line and every line before it.

Editing a line breaks its hash; dropping, inserting or reordering lines breaks the ``seq``/``prev`` chain;
and since only the holder of the audit key can sign, a log rewritten and re-chained (entries deleted, the
hashes recomputed) no longer verifies with the published verification key: every line after the first
``start`` entry that names a key must be followed, or be, a signed line. Each ``start`` entry names the
log (``log_id``, random, for the life of the log), the audit key (``key_id``) and the head the broker found
(``previous_head``), and a broker refuses to extend a log that does not verify with its key. Cutting lines
off the end leaves a valid shorter log: heads published to an append-only sink (:mod:`ppml.broker.heads`)
show what was cut.

Logs written before audit keys carry no ``sig``. They verify as a chain alone; once a broker with an audit
key extends one, its ``start`` entry (signed with its group) records the chain's head, and every line after
it is covered by a signature. A verifier given the key accepts unsigned lines only before the first
``start`` entry that names a key, and says how many there are.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ppml.errors import ConfigError, IntegrityError, NotFoundError

__all__ = ["AuditLog", "AuditReport", "AuditSigner", "verify_audit_log", "key_id_of", "canonical", "GENESIS"]

GENESIS = "0" * 64
_SIGNED = b"ppml-audit/2\0"


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes of ``entry`` as the log holds them and as its hash and signatures cover them."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


def _entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k not in ("hash", "sig")})).hexdigest()


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """The audit key's public id: the first 16 bytes of SHA-256 of the raw public key, hex."""
    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:32]


class AuditSigner:
    """Signs audit entries and published heads with the broker's audit key (Ed25519); never shows the key."""

    __slots__ = ("_key", "public_key", "key_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def sign(self, digest_hex: str) -> str:
        return base64.b64encode(self._key.sign(_SIGNED + bytes.fromhex(digest_hex))).decode("ascii")

    def __repr__(self) -> str:
        return f"AuditSigner(key_id={self.key_id})"

    def __reduce__(self):
        raise TypeError("AuditSigner cannot be pickled")


def signature_valid(public_key: Ed25519PublicKey, digest_hex: str, signature: object) -> bool:
    """Whether ``signature`` (base64) signs ``digest_hex`` with ``public_key``."""
    try:
        raw = base64.b64decode(signature, validate=True) if isinstance(signature, str) else b""
        public_key.verify(raw, _SIGNED + bytes.fromhex(digest_hex))
        return True
    except (InvalidSignature, ValueError, binascii.Error):
        return False


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
            if not isinstance(entry, dict) or raw[:-1] != canonical(entry):
                raise IntegrityError(f"{where}: not in the broker's canonical form (edited)", path=str(path))
            yield number, entry


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify_audit_log` found: counts, the head, and how much of the log is signed."""

    entries: int
    head: str
    allowed: int
    denied: int
    signed: int = 0
    unsigned_prefix: int = 0
    log_id: str | None = None
    key_ids: tuple[str, ...] = ()
    positions: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"entries": self.entries, "head": self.head, "allowed": self.allowed, "denied": self.denied,
                "signed": self.signed, "unsigned_prefix": self.unsigned_prefix, "log_id": self.log_id,
                "key_ids": list(self.key_ids)}


def verify_audit_log(path: str | Path, *, keys: Sequence[Ed25519PublicKey] = (), expect_head: str | None = None,
                     collect: Collection[int] = ()) -> AuditReport:
    """Check every line's hash, the chain and, given verification ``keys``, every signature.

    With ``keys``, every line from the first ``start`` entry naming a key on must be signed, or followed by
    a signed line, by one of them (the key a ``start`` entry names signs up to the next ``start``), and a
    log with no signed line is refused. Raises
    :class:`~ppml.errors.IntegrityError` at the first line that fails. The report keeps ``{seq: hash}`` of
    the lines numbered in ``collect`` (for checking published heads).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"audit log {path} does not exist")
    by_id = {key_id_of(k): k for k in keys}
    prev, count, allowed, denied, signed, unsigned, pending = GENESIS, 0, 0, 0, 0, 0, 0
    log_id, signer_id, seen_ids = None, None, []
    positions: dict[int, str] = {}
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
        if entry.get("event") == "start" and "key_id" in entry:
            signer_id, log_id = str(entry["key_id"]), entry.get("log_id", log_id)
            seen_ids.append(signer_id)
        if "sig" in entry:
            if signer_id is None:
                raise IntegrityError(f"{where}: signed, but no start entry before it names a key", path=str(path))
            if keys and (signer_id not in by_id or not signature_valid(by_id[signer_id], entry["hash"], entry["sig"])):
                raise IntegrityError(
                    f"{where}: its signature does not verify with the audit key {signer_id} (the line was "
                    "written or rewritten by someone without the broker's audit key)" if signer_id in by_id else
                    f"{where}: signed by audit key {signer_id}, which is not among the keys given",
                    path=str(path), hint="give every verification key the log's start entries name (--key)")
            signed, pending = signed + pending + 1, 0
        elif signer_id is not None:
            pending += 1  # a line of a group: the group's last line signs it
        else:
            unsigned += 1
        prev, count = entry["hash"], count + 1
        allowed += entry.get("decision") == "allow"
        denied += entry.get("decision") == "deny"
        if entry["seq"] in collect:
            positions[entry["seq"]] = entry["hash"]
    if keys and not signed:
        raise IntegrityError(f"audit log {path}: no line is signed, so it cannot be checked against the key "
                             "(a log from before audit keys, or one rewritten without signatures)", path=str(path))
    if keys and pending:
        raise IntegrityError(f"audit log {path}: its last {pending} line(s) are not covered by a signature (written "
                             "by someone without the audit key, or the broker stopped while writing them)",
                             path=str(path), hint="a broker answers a request only after its entries are written "
                                                  "whole; keep a copy, then remove those lines to continue the log")
    if expect_head is not None and not hmac.compare_digest(prev, expect_head.lower()):
        raise IntegrityError(f"audit log {path}: ends at {prev[:16]}…, not at the expected head {expect_head[:16]}… "
                             "(lines were cut off the end, or it is another log)", path=str(path))
    return AuditReport(count, prev, allowed, denied, signed, unsigned if signed else 0, log_id,
                       tuple(dict.fromkeys(seen_ids)), positions=positions)


class AuditLog:
    """Appends chained, signed entries to a JSON-lines file (created 0600).

    Opening an existing log locks it (one writer) and checks it whole, signatures included: a broker never
    extends a log it cannot vouch for. :meth:`seal` numbers and chains the next entry (in memory),
    :meth:`render` makes lines of sealed entries, signing the last, :meth:`write` makes them durable
    (``write`` + ``fsync``); :meth:`append` does all three for one entry.

    Parameters
    ----------
    path
        The log file.
    signer
        The audit key; ``None`` writes unsigned lines (tests of the chain alone).
    fsync
        ``fsync`` after each write (off only in tests).
    collect
        Line numbers whose hashes the opening check keeps in :attr:`report` (published heads to confirm).
    """

    def __init__(self, path: str | Path, *, signer: AuditSigner | None = None, fsync: bool = True,
                 collect: Collection[int] = ()) -> None:
        self.path = Path(path)
        self.signer = signer
        self._fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open the audit log {self.path}: {exc.strerror}") from None
        try:
            # Two writers would fork the chain: the second broker on the same log is refused.
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            report = self._check_existing(collect)
        except BlockingIOError:
            os.close(self._fd)
            raise ConfigError(f"the audit log {self.path} is in use by another process (another broker?)",
                              hint="give each broker (each replica) its own audit_log") from None
        except BaseException:
            os.close(self._fd)
            raise
        self._seq, self._head = report.entries, report.head
        self.log_id = report.log_id or secrets.token_hex(16)
        self.report = report
        self.durable = (report.entries - 1, report.head)  # the last line known to be on disk

    def _check_existing(self, collect: Collection[int]) -> AuditReport:
        if self.signer is None or not self._signed_lines():  # new, or from before audit keys
            return verify_audit_log(self.path, collect=collect)
        report = verify_audit_log(self.path, keys=[self.signer.public_key], collect=collect)
        return report

    def _signed_lines(self) -> bool:
        with self.path.open("rb") as handle:
            return any(b'"sig":' in line for line in handle)

    @property
    def head(self) -> str:
        """The hash of the last entry (sealed, not necessarily durable yet)."""
        return self._head

    def seal(self, event: str, **fields: Any) -> dict[str, Any]:
        """The next entry, numbered and chained. Callers render and write entries in sealing order."""
        entry = {"seq": self._seq, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                 "event": event, **fields, "prev": self._head}
        entry["hash"] = _entry_hash(entry)
        self._seq, self._head = self._seq + 1, entry["hash"]
        return entry

    def render(self, entries: Sequence[dict[str, Any]]) -> bytes:
        """The lines of sealed ``entries``, the last one signed (it vouches for the others through the chain)."""
        if self.signer is not None:
            entries[-1]["sig"] = self.signer.sign(entries[-1]["hash"])
        return b"".join(canonical(entry) + b"\n" for entry in entries)

    def write(self, data: bytes, last: Mapping[str, Any]) -> None:
        """Write rendered lines (``last`` is the last of them) and make them durable."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        if self._fsync:
            os.fsync(self._fd)
        self.durable = (last["seq"], last["hash"])

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Seal, sign and write one entry; returns it as written."""
        entry = self.seal(event, **fields)
        self.write(self.render([entry]), entry)
        return entry

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
