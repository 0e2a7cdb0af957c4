"""The broker's HTTPS server: uvicorn with deadlines on slow connections and a cap per client address.

A TLS handshake must finish within ``limits.handshake_timeout``; a request's headers within
``header_timeout`` of its first byte (or of the handshake, for the first request) and its body within
``body_timeout`` of the headers; an idle keep-alive connection closes after ``idle_timeout``. One client
address (an IPv6 /64) holds at most ``max_connections_per_address`` connections per worker; more get 503 at
once, before uvicorn counts them against ``max_concurrency``. So slow or idle connections from one host take
only their own share, and only for seconds, whatever they send. Connections that miss a deadline are
dropped, not closed politely: a peer that stalls would stall a TLS close as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl

from ppml.broker.config import BrokerConfig
from ppml.broker.service import client_group
from ppml.errors import ConfigError

__all__ = ["uvicorn_server"]

GRACEFUL_SHUTDOWN_SECONDS = 5
# Forward-secret AEAD suites only for TLS 1.2 (TLS 1.3 suites are all AEAD); older TLS is off by default.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_BUSY = json.dumps({"error": {"code": "busy", "message": "too many connections from this address"}}).encode()
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                  b"connection: close\r\ncontent-length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY)


class _CoalescingTransport:
    """A transport whose writes within one turn of the event loop go out as one: uvicorn writes a response's
    headers and body separately, and over TLS each write is a record and a system call of its own."""

    def __init__(self, transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


def _protocol_class(config: BrokerConfig):
    """uvicorn's httptools protocol with the broker's connection limits (see the module docstring)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    limits = config.limits
    per_address: dict[str, int] = {}

    class Protocol(HttpToolsProtocol):
        _group: str | None = None
        _refused = False
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # after the TLS handshake
            address = transport.get_extra_info("peername")
            group = client_group(address[0]) if address else "unknown"
            if per_address.get(group, 0) >= limits.max_connections_per_address:
                # Refused before uvicorn counts it, so connections over the cap never take a concurrency slot.
                self._refused = True
                transport.write(_BUSY_RESPONSE)
                transport.close()
                return
            super().connection_made(_CoalescingTransport(transport, self.loop))
            per_address[group] = per_address.get(group, 0) + 1
            self._group = group
            self._arm(limits.header_timeout)  # silence before the first request counts as slow headers

        def connection_lost(self, exc) -> None:
            if self._refused:
                return
            self._disarm()
            if self._group is not None:
                left = per_address[self._group] - 1
                if left:
                    per_address[self._group] = left
                else:
                    del per_address[self._group]
                self._group = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(limits.header_timeout)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm(limits.body_timeout)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._cut_off)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _cut_off(self) -> None:
            # Aborted, not closed: a graceful TLS close waits for a peer that may never answer, and uvicorn
            # counts the connection until it is gone. A request still reading its body sees a disconnect.
            self._deadline = None
            self.transport.abort()

        def timeout_keep_alive_handler(self) -> None:
            self.transport.abort()  # idle after its last response: the same reason as _cut_off

    return Protocol


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server on sockets the broker bound, with a TLS handshake timeout, returning after a
        graceful shutdown instead of re-raising the signal (so the ledger writes its stop entry)."""

        handshake_timeout: float = 10.0

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def startup(self, sockets=None):
            config = self.config

            def create_protocol(_loop=None):
                return config.http_protocol_class(config=config, server_state=self.server_state,
                                                  app_state=self.lifespan.state, _loop=_loop)

            loop = asyncio.get_running_loop()
            self.servers = [await loop.create_server(create_protocol, sock=sock, ssl=config.ssl, backlog=config.backlog,
                                                     ssl_handshake_timeout=self.handshake_timeout)
                            for sock in sockets]
            self.started = True

        async def shutdown(self, sockets=None):
            # Idle keep-alive connections would hold the TLS close handshake open until the grace period ends.
            for connection in list(self.server_state.connections):
                cycle = getattr(connection, "cycle", None)
                if cycle is None or getattr(cycle, "response_complete", False):
                    connection.transport.abort()
            await super().shutdown(sockets)

    return Server


def uvicorn_server(config: BrokerConfig, app):
    """A uvicorn server for ``app`` with the broker's TLS settings and connection limits, not yet serving."""
    import uvicorn

    settings = uvicorn.Config(
        app, ssl_certfile=config.certificate, ssl_keyfile=config.private_key, ssl_ca_certs=config.client_ca,
        ssl_cert_reqs=ssl.CERT_REQUIRED if config.client_ca else ssl.CERT_NONE, ssl_ciphers=_TLS12_CIPHERS,
        http=_protocol_class(config), loop="none", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=config.limits.idle_timeout, limit_concurrency=config.limits.max_concurrency,
        backlog=2048, server_header=False, proxy_headers=False, access_log=False, log_level="warning",
        lifespan="off",
    )
    try:
        settings.load()
    except ssl.SSLError as exc:
        raise ConfigError(f"cannot use the TLS certificate {config.certificate} with key {config.private_key}: "
                          f"{exc.reason or exc}") from None
    server = _server_class()(settings)
    server.handshake_timeout = config.limits.handshake_timeout
    return server
