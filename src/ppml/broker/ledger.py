"""The ledger: where a release becomes final, and the only writer of the audit log.

A worker that has verified evidence, judged the policies and sealed the keys hands the ledger the request's
nonce and its audit entries. The ledger records the nonce as used (refusing a second use), appends the
entries, and answers only when they are durable: the worker sends the sealed keys after that answer, so no
key leaves before its audit entry is on disk.

**Group commit.** Entries are chained as they arrive; one ``write`` + ``fsync`` then makes durable every
entry that arrived while the previous one ran, the last of them signed. Throughput waits neither on the
disk nor on a signature per entry, and each request still waits for the ``fsync`` that covers its entries.

**Refusal budget.** A request refused as a whole (malformed, a nonce that is made up, used or expired,
evidence that does not verify, over the rate limit) costs its sender nothing, so such entries are budgeted
per client address: :class:`RefusalBudget` lets ``refusals_per_second`` (burst ``refusal_burst``) through,
counts the rest, and the next entry for that client, or a ``suppressed`` entry at the latest when the
broker publishes heads or stops, carries the counts. Decisions on verified evidence are never suppressed.

**One per replica.** With ``workers: 1`` the ledger lives in the serving process; with more, in the
supervising process, and each worker reaches it over a Unix socket pair (:mod:`ppml.broker.ledger_link`).
A replica so has one audit chain, one record of used nonces (unless they are in Redis, shared by replicas)
and one refusal budget.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ppml.broker.audit import AuditLog, AuditSigner
from ppml.broker.buckets import TokenBuckets
from ppml.broker.heads import HeadSink, check_heads, head_record, last_head, published_seqs
from ppml.broker.nonces import UsedNonces
from ppml.errors import IntegrityError, PpmlError

__all__ = ["Ledger", "LedgerError", "RefusalBudget", "open_ledger"]

log = logging.getLogger("ppml.broker")


class LedgerError(PpmlError):
    """The ledger cannot make entries durable (the disk failed, the ledger process is gone): refuse."""


class RefusalBudget:
    """Token buckets per client for audit entries of requests refused as a whole; counts what it holds back."""

    def __init__(self, rate: float, burst: int) -> None:
        self._buckets = TokenBuckets(rate, burst)
        self.suppressed: dict[str, Counter[str]] = {}

    def allows(self, client: str, code: str) -> bool:
        if not self._buckets.take(client):
            return True
        self.suppressed.setdefault(client, Counter())[code] += 1
        return False

    def take(self, client: str) -> dict[str, int] | None:
        """The counts held back for ``client`` since its last entry (and forget them)."""
        counts = self.suppressed.pop(client, None)
        return dict(counts) if counts else None


class Ledger:
    """Consumes nonces and appends audit entries durably, in groups (see the module docstring).

    Parameters
    ----------
    audit
        The open audit log (its opening check done).
    used
        The record of used nonces.
    budget
        The refusal budget.
    sink, replica, interval
        Where heads are published, this replica's name in them, and how often (seconds); no sink, no heads.
    """

    def __init__(self, audit: AuditLog, used: UsedNonces, budget: RefusalBudget, *, sink: HeadSink | None = None,
                 replica: str = "", interval: float = 10.0) -> None:
        self.audit, self.used, self.budget = audit, used, budget
        self.sink, self.replica, self.interval = sink, replica, interval
        self.counters: Counter[str] = Counter()
        self._pending: list[dict[str, Any]] = []
        self._waiters: list[asyncio.Future] = []
        self._writer: asyncio.Task | None = None
        self._broken: BaseException | None = None
        self._published: tuple[int, str] | None = None
        self._publisher: asyncio.Task | None = None
        # One thread writes: a group's write+fsync never overlaps the next, so lines land in sealing order.
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ppml-audit")

    # -- start and stop -------------------------------------------------------------------------------

    async def start(self, published: Mapping[str, Any] | None, **fields: Any) -> None:
        """Write the ``start`` entry, publish the head, and publish from now on every ``interval``.

        ``published`` is the last head this replica published (:func:`open_ledger` checked that the log holds it).
        """
        report, signer = self.audit.report, self.audit.signer
        previous = {"seq": report.entries - 1, "hash": report.head} if report.entries else None
        await self.append([{"event": "start", "log_id": self.audit.log_id, "replica": self.replica,
                            "key_id": signer.key_id if signer else None, "previous_head": previous,
                            "published_head": None if published is None else
                            {k: published.get(k) for k in ("seq", "hash", "time")}, **fields}])
        if self.sink is not None:
            await self.publish()
            self._publisher = asyncio.get_running_loop().create_task(self._publish_every())

    async def stop(self, **fields: Any) -> str:
        """Write the held-back counts and the ``stop`` entry, publish the last head; returns it."""
        if self._publisher is not None:
            self._publisher.cancel()
        await self._flush_suppressed()
        await self.append([{"event": "stop", "counters": dict(self.counters), **fields}])
        if self.sink is not None:
            await self.publish()
            await self.sink.close()
        await self.used.close()
        self._disk.shutdown()
        self.audit.close()
        return self.audit.durable[1]

    # -- the operations -------------------------------------------------------------------------------

    async def release(self, nonce: bytes, expiry: int, entries: list[dict[str, Any]], replay: dict[str, Any],
                      client: str, *, whole: bool) -> bool:
        """Record ``nonce`` as used and append ``entries`` durably: ``True``. A nonce already used appends the
        ``replay`` refusal instead: ``False``. ``whole``: the entries refuse the request as a whole (budgeted).

        Raises :class:`~ppml.broker.nonces.NonceStoreError` when the nonce cannot be recorded, and
        :class:`LedgerError` when entries cannot be made durable; then nothing may be released."""
        if not await self.used.first_use(nonce, expiry):
            await self.refuse(replay, client)
            return False
        if whole:
            await self.refuse(entries[0], client)
        else:
            await self.append(entries)
        return True

    async def refuse(self, entry: dict[str, Any], client: str) -> None:
        """Append the refusal of a whole request, within ``client``'s budget."""
        self.counters["denied"] += 1
        if not self.budget.allows(client, str(entry.get("code"))):
            return
        held = self.budget.take(client)
        await self.append([{**entry, **({"suppressed_before": held} if held else {})}])

    async def append(self, entries: list[dict[str, Any]]) -> None:
        """Chain, sign and queue ``entries``; return when they are durable."""
        if self._broken is not None:
            raise LedgerError(f"the audit log {self.audit.path} could not be written ({self._broken}); nothing is "
                              "released until the broker is restarted")
        for fields in entries:
            decision = fields.get("decision")
            if decision == "allow":
                self.counters["released"] += 1
            elif decision == "deny" and fields.get("event") == "release" and "key" in fields:
                self.counters["denied"] += 1
            self._pending.append(self.audit.seal(**fields))
        done = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_groups())
        await done

    async def _write_groups(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                # One signature per write: the group's last entry vouches for the rest through the chain.
                data, last, waiters = self.audit.render(self._pending), self._pending[-1], self._waiters
                self._pending, self._waiters = [], []
                try:
                    await loop.run_in_executor(self._disk, self.audit.write, data, last)
                except OSError as exc:
                    # Lines after a failed write would leave a hole in the chain: stop appending for good.
                    self._broken = exc
                    log.error("the audit log %s could not be written: %s; refusing every release from now on",
                              self.audit.path, exc)
                    failure = LedgerError(f"the audit log could not be written ({exc.strerror or exc})")
                    for waiter in waiters + self._waiters:
                        waiter.done() or waiter.set_exception(failure)
                    self._pending, self._waiters = [], []
                    return
                for waiter in waiters:
                    waiter.done() or waiter.set_result(None)
        finally:
            self._writer = None

    async def totals(self, add: Mapping[str, int] | None = None) -> dict[str, int]:
        """The replica's counters, after adding a worker's own counts ``add`` (nonces issued, KMS calls)."""
        self.counters.update(add or {})
        return dict(self.counters)

    # -- heads ----------------------------------------------------------------------------------------

    async def publish(self) -> None:
        """Publish the durable head, if it moved since the last publication."""
        seq, digest = self.audit.durable
        if self.sink is None or self.audit.signer is None or (seq, digest) == self._published or seq < 0:
            return
        await self.sink.append(head_record(self.audit.signer, replica=self.replica, log_id=self.audit.log_id,
                                           seq=seq, digest=digest))
        self._published = (seq, digest)
        self.counters["heads_published"] += 1

    async def _publish_every(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._flush_suppressed()
                await self.publish()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the sink being away must not stop releases; it is logged and retried
                self.counters["heads_failed"] += 1
                log.warning("cannot publish the audit log head to %s: %s: %s", self.sink.url, type(exc).__name__, exc)

    async def _flush_suppressed(self) -> None:
        for client in list(self.budget.suppressed):
            held = self.budget.take(client)
            if held:
                await self.append([{"event": "suppressed", "caller": {"address": client}, "counts": held}])


async def open_ledger(path: str, signer: AuditSigner, used: UsedNonces, budget: RefusalBudget, *,
                      sink: HeadSink | None, replica: str, interval: float, **start: Any) -> Ledger:
    """Open the audit log, check that it holds the last head this replica published, and start the ledger.

    Raises :class:`~ppml.errors.IntegrityError` when the log does not verify with the audit key, or lacks
    the published head (lines were cut off, or the log was replaced).
    """
    keys = [signer.public_key]
    published = last_head(await sink.read(), replica, keys) if sink is not None else None
    audit = AuditLog(path, signer=signer, collect=published_seqs([published], keys) if published else ())
    try:
        if published is not None:
            where = f"audit log {path}"
            if audit.report.log_id != published.get("log_id"):
                raise IntegrityError(f"{where} is not the log replica {replica} published heads of (log "
                                     f"{published.get('log_id')}, line {published.get('seq')}): it was replaced or "
                                     "cut", hint="restore the log, or give this replica another name")
            check_heads(audit.report, [published], keys, where=where)
        ledger = Ledger(audit, used, budget, sink=sink, replica=replica, interval=interval)
        await ledger.start(published, **start)
    except BaseException:
        audit.close()
        raise
    return ledger
