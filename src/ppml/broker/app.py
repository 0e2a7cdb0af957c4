"""The key broker's HTTP interface (ASGI, Starlette). There is no admin operation over HTTP.

Limits: a request body larger than ``limits.max_request_bytes`` is refused with 413 before it is parsed;
each client address has a token bucket of ``requests_per_second`` with ``burst`` (429 with Retry-After).
Verification and unwrapping run in worker threads so one slow KMS call does not stall the event loop.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ppml import __version__
from ppml.broker.service import BrokerService, Refusal
from ppml.keys.broker_protocol import HEALTH_PATH, NONCE_PATH, PROTOCOL, RELEASE_PATH, b64

__all__ = ["create_app"]

log = logging.getLogger("ppml.broker")
_RATE_AUDIT_INTERVAL = 10.0
_MAX_CALLER_NAME = 200


def _client_group(address: str) -> str:
    """The unit of rate limiting: an IPv4 address, or an IPv6 /64 (one host can use a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


class _RateLimiter:
    """Token buckets per client group; idle (full) buckets are dropped, so memory follows active clients."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._last_audit: dict[str, float] = {}
        self._next_prune = 1024
        self._lock = threading.Lock()

    def wait_time(self, client: str) -> float:
        """0 when a request from ``client`` may go ahead now, else seconds until it may."""
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= self._next_prune:
                self._prune(now)
            tokens, stamp = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        refill = self.burst / self.rate
        self._buckets = {c: (t, s) for c, (t, s) in self._buckets.items() if now - s < refill}
        self._last_audit = {c: s for c, s in self._last_audit.items() if now - s < _RATE_AUDIT_INTERVAL}
        self._next_prune = max(1024, 2 * len(self._buckets))

    def should_audit(self, client: str) -> bool:
        """At most one audit entry per client per interval, so a flood cannot fill the disk."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_audit.get(client, -math.inf) < _RATE_AUDIT_INTERVAL:
                return False
            self._last_audit[client] = now
            return True


def _error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers or None)


def create_app(service: BrokerService) -> Starlette:
    """The ASGI application serving ``service``."""
    limits = service.config.limits
    limiter = _RateLimiter(limits.requests_per_second, limits.burst)

    def caller_of(request: Request, name: object = None) -> dict[str, Any]:
        caller: dict[str, Any] = {"address": request.client.host if request.client else "unknown"}
        if isinstance(name, str) and name:
            caller["declared_name"] = name[:_MAX_CALLER_NAME]
        return caller

    def limited(request: Request) -> JSONResponse | None:
        client = _client_group(request.client.host) if request.client else "unknown"
        wait = limiter.wait_time(client)
        if not wait:
            return None
        if limiter.should_audit(client) and request.url.path == RELEASE_PATH:
            service.refuse(caller_of(request), Refusal(429, "rate", "rate limit exceeded"))
        return _error(429, "rate", f"more than {limits.requests_per_second:g} requests per second from {client}",
                      **{"Retry-After": str(max(1, math.ceil(wait)))})

    async def read_json(request: Request) -> Any:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limits.max_request_bytes):
            raise Refusal(413, "too-large", f"the request body exceeds {limits.max_request_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_request_bytes:
                raise Refusal(413, "too-large", f"the request body exceeds {limits.max_request_bytes} bytes")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise Refusal(400, "malformed", "the request body is not JSON") from None

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "protocol": PROTOCOL, "version": __version__,
                             "counters": dict(service.counters)})

    async def nonce(request: Request) -> JSONResponse:
        if (response := limited(request)) is not None:
            return response
        try:
            value, lifetime = service.issue_nonce()
        except Refusal as refusal:
            return _error(refusal.status, refusal.code, refusal.reason)
        return JSONResponse({"nonce": b64(value), "expires_in": lifetime}, headers={"Cache-Control": "no-store"})

    async def release(request: Request) -> JSONResponse:
        if (response := limited(request)) is not None:
            return response
        try:
            try:
                body = await read_json(request)
            except Refusal as refusal:
                service.refuse(caller_of(request), refusal)
                raise
            caller = caller_of(request, body.get("caller") if isinstance(body, dict) else None)
            result = await run_in_threadpool(service.release, body, caller)
        except Refusal as refusal:
            return _error(refusal.status, refusal.code, refusal.reason)
        except Exception:  # never an unaudited answer, never a traceback to the caller
            log.exception("release request failed")
            service.refuse(caller_of(request), Refusal(500, "internal", "internal error"))
            return _error(500, "internal", "internal error; see the broker's log")
        return JSONResponse(result, headers={"Cache-Control": "no-store"})

    routes = [
        Route(HEALTH_PATH, health, methods=["GET"]),
        Route(NONCE_PATH, nonce, methods=["POST"]),
        Route(RELEASE_PATH, release, methods=["POST"]),
    ]
    return Starlette(routes=routes)
