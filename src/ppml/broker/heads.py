"""Audit log heads published to an append-only sink: lines cut off a log, or a log replaced whole, show.

A signed log still verifies after lines are cut off its end, or when it is deleted and started anew. So the
broker publishes the head of its log (the ``seq`` and ``hash`` of the last durable line) every
``audit_heads.interval`` while it changes, and when it stops, to a sink that keeps what was written:

* ``file:PATH``: appends to a local file. For development, or a file on storage the broker's host cannot
  rewrite (a WORM mount).
* ``az://CONTAINER/PATH`` or ``abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH``: an Azure append blob.
  Give the container a time-based immutability policy with protected append writes allowed: then nobody,
  the broker and the storage account's owner included, can change or delete what was published until the
  retention ends. Credentials are those of every ppml Azure path (docs/azure.md).

A record is one JSON line, signed with the audit key like the log's lines::

    {"replica": "broker-0", "log_id": "…", "seq": 41, "hash": "…", "time": "…", "key_id": "…", "sig": "…"}

When it starts, a broker reads the last record of its replica (its ``replica`` name) and refuses a log that
does not hold that head: the log was cut or replaced. ``ppml broker audit verify --heads`` checks every
record of the log against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ppml.broker.audit import AuditReport, AuditSigner, canonical, key_id_of, signature_valid
from ppml.errors import ConfigError, IntegrityError

__all__ = ["HeadSink", "open_sink", "head_record", "last_head", "check_heads", "published_seqs"]

log = logging.getLogger("ppml.broker")
_TAIL_BYTES = 256 * 1024  # the tail a broker reads at start to find its replica's last record


def head_record(signer: AuditSigner, *, replica: str, log_id: str, seq: int, digest: str) -> bytes:
    """One signed head record, as a line."""
    record = {"replica": replica, "log_id": log_id, "seq": seq, "hash": digest, "key_id": signer.key_id,
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    record["sig"] = signer.sign(hashlib.sha256(canonical(record)).hexdigest())
    return canonical(record) + b"\n"


def _records(text: bytes, *, where: str, skip_partial: bool) -> list[dict[str, Any]]:
    lines = text.split(b"\n")
    if skip_partial and lines:
        lines = lines[1:]  # a tail read starts mid-line
    records = []
    for raw in filter(None, lines):
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            raise IntegrityError(f"{where}: a line is not JSON (the sink was written by something else)") from None
        if isinstance(record, dict):
            records.append(record)
    return records


class HeadSink:
    """Where heads go; subclasses append lines and read back the tail."""

    url: str

    async def append(self, line: bytes) -> None:
        raise NotImplementedError

    async def read(self, *, whole: bool = False) -> list[dict[str, Any]]:
        """The records, oldest first: all of them, or (``whole=False``) at least the last :data:`_TAIL_BYTES`
        worth, which hold every replica's last record unless hundreds of replicas share the sink."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""


class FileHeadSink(HeadSink):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.url = f"file:{path}"

    async def append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def read(self, *, whole: bool = False) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = 0 if whole else max(0, size - _TAIL_BYTES)
            handle.seek(start)
            return _records(handle.read(), where=f"heads file {self.path}", skip_partial=start > 0)


class AzureBlobHeadSink(HeadSink):
    """An Azure append blob, created on first use (never replaced)."""

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit

        from ppml.io.azure import resolve

        self.url = url
        self._options = resolve(url)[0]
        parts = urlsplit(url)  # az://CONTAINER/PATH or abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH
        self._container, self._blob = parts.netloc.split("@", 1)[0], parts.path.lstrip("/")
        if not self._container or not self._blob:
            raise ConfigError(f"audit_heads.sink {url} must name a container and a blob path")
        self._client = None

    async def _blob_client(self):
        if self._client is None:
            from azure.storage.blob.aio import BlobServiceClient

            if "connection_string" in self._options:
                service = BlobServiceClient.from_connection_string(self._options["connection_string"])
            else:
                host = self._options.get("account_host") or f"{self._options['account_name']}.blob.core.windows.net"
                service = BlobServiceClient(f"https://{host}", credential=self._options["credential"])
            self._service = service
            self._client = service.get_blob_client(self._container, self._blob)
        return self._client

    async def append(self, line: bytes) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError

        blob = await self._blob_client()
        try:
            await blob.create_append_blob(match_condition=MatchConditions.IfMissing)
        except ResourceExistsError:
            pass  # appended to, never replaced
        await blob.append_block(line)

    async def read(self, *, whole: bool = False) -> list[dict[str, Any]]:
        from azure.core.exceptions import ResourceNotFoundError

        blob = await self._blob_client()
        try:
            size = (await blob.get_blob_properties()).size
        except ResourceNotFoundError:
            return []
        if size == 0:
            return []
        start = 0 if whole else max(0, size - _TAIL_BYTES)
        data = await (await blob.download_blob(offset=start, length=size - start)).readall()
        return _records(data, where=f"heads blob {self.url}", skip_partial=start > 0)

    async def close(self) -> None:
        if self._client is not None:
            await self._service.close()
            self._client = None


def open_sink(url: str, *, where: str) -> HeadSink:
    """The sink ``url`` names (``file:PATH``, ``az://``/``abfs(s)://`` Azure paths)."""
    if url.startswith("file:"):
        return FileHeadSink(url[len("file:"):])
    if url.startswith(("az://", "abfs://", "abfss://")):
        return AzureBlobHeadSink(url)
    raise ConfigError(f"{where}: audit_heads.sink {url!r} is not a sink ppml writes",
                      hint="file:PATH for development, or an Azure path (az://CONTAINER/PATH) on a container with "
                           "an immutability policy")


def _verified(records: Iterable[Mapping[str, Any]], keys: Sequence[Ed25519PublicKey]) -> list[Mapping[str, Any]]:
    """The records signed by one of ``keys``; other lines are not heads of these logs and are skipped."""
    by_id = {key_id_of(k): k for k in keys}
    found = []
    for record in records:
        key = by_id.get(str(record.get("key_id")))
        body = {k: v for k, v in record.items() if k != "sig"}
        if key is not None and signature_valid(key, hashlib.sha256(canonical(body)).hexdigest(), record.get("sig")):
            found.append(record)
    return found


def last_head(records: Sequence[Mapping[str, Any]], replica: str,
              keys: Sequence[Ed25519PublicKey]) -> Mapping[str, Any] | None:
    """The last signed record ``replica`` published, or ``None``."""
    mine = [r for r in _verified(records, keys) if r.get("replica") == replica]
    return mine[-1] if mine else None


def published_seqs(records: Sequence[Mapping[str, Any]], keys: Sequence[Ed25519PublicKey]) -> frozenset[int]:
    """The line numbers the signed records name (what a log check must remember of the log)."""
    return frozenset(r["seq"] for r in _verified(records, keys) if isinstance(r.get("seq"), int))


def check_heads(report: AuditReport, records: Sequence[Mapping[str, Any]], keys: Sequence[Ed25519PublicKey],
                *, where: str) -> int:
    """Check that the log of ``report`` (made collecting :func:`published_seqs`) holds every head published for it;
    return how many were checked. Raises IntegrityError naming the first head it lacks."""
    checked = 0
    for record in _verified(records, keys):
        if record.get("log_id") != report.log_id:
            continue
        seq, digest = record.get("seq"), record.get("hash")
        if report.positions.get(seq) != digest:
            state = "is shorter" if isinstance(seq, int) and seq >= report.entries else "differs there"
            raise IntegrityError(f"{where}: the head published at {record.get('time')} (line {seq}, "
                                 f"{str(digest)[:16]}…) is not in the log, which {state}: lines were cut off or "
                                 "rewritten after it was published",
                                 hint="compare with a backup; the published heads are authentic")
        checked += 1
    return checked

