"""How workers in other processes reach their replica's ledger: one Unix socket pair per worker.

Messages are length-prefixed JSON (4 bytes, big endian, then the object), at most 16 MiB; each request
carries an id, and its answer the same id, so one worker's requests run concurrently and share the ledger's
write groups with the other workers'. The supervisor answers with :func:`serve_worker`; a worker calls
through :class:`RemoteLedger`, which has the operations of :class:`~ppml.broker.ledger.Ledger` the service
uses. A request the ledger could not complete is answered with the reason, so the worker refuses the
release instead of waiting; if the supervisor is gone, every call fails with
:class:`~ppml.broker.ledger.LedgerError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Mapping
from typing import Any

from ppml.broker.ledger import Ledger, LedgerError
from ppml.broker.nonces import NonceStoreError

__all__ = ["RemoteLedger", "serve_worker"]

log = logging.getLogger("ppml.broker")
_FRAME = struct.Struct(">I")
_MAX_FRAME = 16 * 1024 * 1024


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    if size > _MAX_FRAME:
        raise LedgerError(f"a ledger message of {size} bytes is larger than {_MAX_FRAME}")
    return json.loads(await reader.readexactly(size))


def _frame(message: Mapping[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return _FRAME.pack(len(data)) + data


async def serve_worker(ledger: Ledger, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer one worker's requests until it disconnects; requests run concurrently, so they share groups."""
    tasks: set[asyncio.Task] = set()

    async def answer(message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"i": message.get("i")}
        try:
            op = message["op"]
            if op == "release":
                reply["r"] = await ledger.release(bytes.fromhex(message["nonce"]), message["expiry"],
                                                  message["entries"], message["replay"], message["client"],
                                                  whole=message["whole"])
            elif op == "refuse":
                await ledger.refuse(message["entry"], message["client"])
            elif op == "totals":
                reply["r"] = await ledger.totals(message["add"])
            else:
                raise LedgerError(f"unknown ledger operation {op!r}")
        except NonceStoreError as exc:
            reply["nonce_store"] = str(exc)
        except Exception as exc:  # answered, so the worker refuses the request instead of waiting forever
            log.exception("ledger operation failed")
            reply["e"] = f"{type(exc).__name__}: {exc}"
        writer.write(_frame(reply))

    try:
        while True:
            try:
                message = await _read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            task = asyncio.get_running_loop().create_task(answer(message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        writer.close()


class RemoteLedger:
    """A worker's handle on the replica's ledger in the supervising process (same operations as :class:`Ledger`)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._calls: dict[int, asyncio.Future] = {}
        self._next = 0
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        failure: BaseException = LedgerError("the ledger process closed the connection")
        try:
            while True:
                reply = await _read_frame(self._reader)
                call = self._calls.pop(reply.get("i"), None)
                if call is not None and not call.done():
                    call.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            failure = LedgerError(f"the ledger process is gone ({type(exc).__name__})")
        finally:
            for call in self._calls.values():
                call.done() or call.set_exception(failure)
            self._calls.clear()

    async def _call(self, op: str, **fields: Any) -> Any:
        if self._listener.done():
            raise LedgerError("the ledger process is gone")
        self._next += 1
        call = asyncio.get_running_loop().create_future()
        self._calls[self._next] = call
        self._writer.write(_frame({"i": self._next, "op": op, **fields}))
        reply = await call
        if "nonce_store" in reply:
            raise NonceStoreError(reply["nonce_store"])
        if "e" in reply:
            raise LedgerError(f"the ledger failed: {reply['e']}")
        return reply.get("r")

    async def release(self, nonce: bytes, expiry: int, entries: list[dict[str, Any]], replay: dict[str, Any],
                      client: str, *, whole: bool) -> bool:
        return bool(await self._call("release", nonce=nonce.hex(), expiry=expiry, entries=entries, replay=replay,
                                     client=client, whole=whole))

    async def refuse(self, entry: dict[str, Any], client: str) -> None:
        await self._call("refuse", entry=entry, client=client)

    async def totals(self, add: Mapping[str, int] | None = None) -> dict[str, int]:
        return await self._call("totals", add=dict(add or {}))

    def close(self) -> None:
        self._writer.close()

