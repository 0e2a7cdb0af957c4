"""The key broker's HTTP interface: a small ASGI application. There is no admin operation over HTTP.

Three routes, exact paths and methods (``GET /v1/health``, ``POST /v1/nonce``, ``POST /v1/keys/release``);
anything else is a JSON 404 or 405. Plain ASGI rather than a framework: a release is two requests, and
routing, request and response objects cost more per request than the release's own cryptography.

Limits: a request body larger than ``limits.max_request_bytes`` is refused with 413 before it is parsed;
each client address has a token bucket of ``requests_per_second`` with ``burst`` (429 with Retry-After),
shared out evenly over the replica's worker processes. Slow and idle connections are the server's business
(:mod:`ppml.broker.server`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from ppml import __version__
from ppml.broker.buckets import TokenBuckets
from ppml.broker.service import BrokerService, Refusal, caller_of, client_group
from ppml.keys.broker_protocol import HEALTH_PATH, NONCE_PATH, PROTOCOL, RELEASE_PATH, b64

__all__ = ["create_app"]

log = logging.getLogger("ppml.broker")
_ROUTES = {HEALTH_PATH: "GET", NONCE_PATH: "POST", RELEASE_PATH: "POST"}
_NO_STORE = [(b"cache-control", b"no-store")]


Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


async def _respond(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await _respond(send, status, {"error": {"code": code, "message": message}}, headers)


class _Disconnected(Exception):
    """The client went away before its request body arrived (or the server closed a slow connection)."""


def create_app(service: BrokerService, *, workers: int = 1) -> Callable[[dict, Receive, Send], Awaitable[None]]:
    """The ASGI application serving ``service``; ``workers`` is how many processes share the rate limit."""
    limits = service.config.limits
    # Connections are spread over the workers, so each enforces its share of the per-client rate.
    limiter = TokenBuckets(limits.requests_per_second / workers, max(1, math.ceil(limits.burst / workers)))

    async def read_json(receive: Receive, headers: dict[bytes, bytes]) -> Any:
        size = headers.get(b"content-length")
        too_large = Refusal(413, "too-large", f"the request body exceeds {limits.max_request_bytes} bytes")
        if size is not None and (not size.isdigit() or int(size) > limits.max_request_bytes):
            raise too_large
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            body += message.get("body", b"")
            if len(body) > limits.max_request_bytes:
                raise too_large
            if not message.get("more_body", False):
                break
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise Refusal(400, "malformed", "the request body is not JSON") from None

    async def release(caller: dict[str, Any], receive: Receive, headers: dict[bytes, bytes], send: Send) -> None:
        try:
            try:
                body = await read_json(receive, headers)
            except Refusal as refusal:
                await service.refuse(caller, refusal)
                raise
            if isinstance(body, dict):
                caller = caller_of(caller["address"], body.get("caller"))
            result = await service.release(body, caller)
        except _Disconnected:
            return
        except Refusal as refusal:
            await _error(send, refusal.status, refusal.code, refusal.shown)
            return
        except Exception:  # never an unaudited answer, never a traceback to the caller
            log.exception("release request failed")
            await _error(send, 500, "internal", "internal error; see the broker's log")
            return
        await _respond(send, 200, result, _NO_STORE)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path not in _ROUTES:
            await _error(send, 404, "not-found", f"no such endpoint; the broker serves {', '.join(_ROUTES)}")
            return
        if method != _ROUTES[path]:
            await _error(send, 405, "method", f"{path} takes {_ROUTES[path]}", [(b"allow", _ROUTES[path].encode())])
            return
        if path == HEALTH_PATH:
            await _respond(send, 200, {"status": "ok", "protocol": PROTOCOL, "version": __version__,
                                       "counters": await service.counters()})
            return
        address = scope["client"][0] if scope.get("client") else "unknown"
        client = client_group(address)
        wait = limiter.take(client)
        if wait:
            if path == RELEASE_PATH:
                await service.refuse(caller_of(address), Refusal(429, "rate", "rate limit exceeded"))
            await _error(send, 429, "rate", f"more than {limits.requests_per_second:g} requests per second from "
                                            f"{client}", [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
            return
        if path == NONCE_PATH:
            value, lifetime = service.issue_nonce()
            await _respond(send, 200, {"nonce": b64(value), "expires_in": lifetime}, _NO_STORE)
            return
        await release(caller_of(address), receive, dict(scope["headers"]), send)

    return app
