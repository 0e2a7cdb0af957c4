"""Running the key broker: uvicorn over TLS in one or several processes, slow clients cut off, graceful stop.

**Connections.** A TLS handshake must finish within ``limits.handshake_timeout``; a request's headers within
``header_timeout`` of its first byte (or of the handshake, for the first request) and its body within
``body_timeout`` of the headers; an idle keep-alive connection closes after ``idle_timeout``. One client
address (an IPv6 /64) holds at most ``max_connections_per_address`` connections per worker; more get 503 at
once. So slow or idle connections from one host can take only their own share of ``max_concurrency``, and
only for seconds, whatever they send.

**Processes.** With ``workers: 1`` one process serves and holds the ledger. With ``workers: N`` the process
started is a supervisor: it binds the port, opens the ledger (:mod:`ppml.broker.ledger`), and starts N
worker processes (spawned, so each opens its own KMS sessions) that share the listening socket, each with a
socket pair to the ledger. Each worker keeps its own key cache and rate limiter (with 1/N of the rate).
The nonce secret, random unless configured, goes to the workers through the spawn pipe, never through the
command line or the environment. If a worker dies, the supervisor stops the others and exits non-zero: an
orchestrator restarts the replica whole.

**Stopping.** SIGTERM or Ctrl-C stops accepting connections, lets in-flight requests finish (5 s), closes
idle connections, forgets cached keys, appends a ``stop`` entry with the counters, publishes the last head
and returns the audit log's head hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import sys
from typing import Any

from ppml.attest.evidence import open_verifier
from ppml.broker.app import create_app
from ppml.broker.audit_key import load_audit_signer
from ppml.broker.config import BrokerConfig, load_config
from ppml.broker.heads import open_sink
from ppml.broker.ledger import RefusalBudget, RemoteLedger, open_ledger, serve_worker
from ppml.broker.nonces import MemoryUsedNonces, NonceIssuer, RedisUsedNonces, UsedNonces, derive_secret
from ppml.broker.service import BrokerService, client_group
from ppml.errors import ConfigError
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.kms import KeyManagementService
from ppml.keys.settings import KeySettings, read_secret_source

__all__ = ["serve"]

log = logging.getLogger("ppml.broker")
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


def _uvicorn(config: BrokerConfig, app):
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


def _bind(config: BrokerConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    try:
        return socket.create_server((config.host, config.port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(f"the key broker could not listen on {config.host}:{config.port}: {exc.strerror}",
                          hint="is another process using the port? choose another with listen.port") from None


def _run(main) -> Any:
    """Run a coroutine on uvloop when it is installed (faster TLS and sockets), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _nonce_secret(config: BrokerConfig) -> bytes:
    where = f"broker configuration {config.source}"
    if config.nonces.secret is None:
        return os.urandom(32)  # nonces of this replica only (its workers share it)
    return derive_secret(read_secret_source(config.nonces.secret, what="nonce secret"), where=where)


def _used_nonces(config: BrokerConfig) -> UsedNonces:
    settings = config.nonces
    if settings.redis_url is None:
        return MemoryUsedNonces(settings.memory_mib * 1024 * 1024)
    password = read_secret_source(settings.redis_password, what="Redis password") if settings.redis_password else None
    return RedisUsedNonces(settings.redis_url, password=password, ca=settings.redis_ca)


def _open_backends(config: BrokerConfig) -> dict[str, KeyManagementService]:
    settings, names = KeySettings.from_backend_entries(config.kms, where=f"broker configuration {config.source}")
    return settings.backends(names)


def _warn(config: BrokerConfig) -> None:
    if "simulated" in config.verifiers:
        log.warning("SIMULATED ATTESTATION IS ENABLED: evidence of type 'simulated' proves nothing; keys "
                    "governed by a policy that allows it are released to any caller")
    if config.verification_time is not None:
        log.warning("evidence is verified as of %s, not the current time: for checking stored evidence only",
                    config.verification_time.isoformat())


async def _open_ledger(config: BrokerConfig, backends: dict[str, KeyManagementService]):
    used = _used_nonces(config)
    if isinstance(used, RedisUsedNonces):
        await used.ping()
    signer = load_audit_signer(config.audit_key, list(backends.values()))
    sink = open_sink(config.heads_sink, where=f"broker configuration {config.source}") if config.heads_sink else None
    budget = RefusalBudget(config.limits.refusals_per_second, config.limits.refusal_burst)
    return await open_ledger(config.audit_log, signer, used, budget, sink=sink, replica=config.replica,
                             interval=config.heads_interval, config=config.source,
                             policies=[p.name for p in config.policies], verifiers=sorted(config.verifiers),
                             kms=sorted(backends), workers=config.workers,
                             verification_time=config.verification_time.isoformat() if config.verification_time
                             else None)


def _service(config: BrokerConfig, backends, secret: bytes, ledger, worker: int | None = None) -> BrokerService:
    verifiers = {t: open_verifier(t, **s) for t, s in config.verifiers.items()}
    withheld = frozenset(w.wrapped for w in DataKeyFile.load(config.audit_key).envelope)
    return BrokerService(config, backends=backends, verifiers=verifiers,
                         issuer=NonceIssuer(config.limits.nonce_lifetime, secret), ledger=ledger, withheld=withheld,
                         worker=worker)


def serve(config: BrokerConfig) -> str:
    """Serve until SIGINT/SIGTERM; in-flight requests get 5 s to finish. Returns the audit log's head."""
    _warn(config)
    listener = _bind(config)
    secret = _nonce_secret(config)
    try:
        if config.workers == 1:
            return _run(_serve_alone(config, listener, secret))
        return _run(_supervise(config, listener, secret))
    finally:
        listener.close()


async def _serve_alone(config: BrokerConfig, listener: socket.socket, secret: bytes) -> str:
    backends = _open_backends(config)
    ledger = await _open_ledger(config, backends)
    service = None
    try:
        service = _service(config, backends, secret, ledger)
        server = _uvicorn(config, create_app(service))
        log.info("key broker listening on https://%s:%d", config.host, config.port)
        await server.serve(sockets=[listener])
        await service.counters()
    finally:
        if service is not None:
            service.close()
        head = await ledger.stop()
    return head


async def _supervise(config: BrokerConfig, listener: socket.socket, secret: bytes) -> str:
    ledger = await _open_ledger(config, _open_backends(config))
    context = multiprocessing.get_context("spawn")
    workers, tasks = [], []
    try:
        for index in range(config.workers):
            ours, theirs = socket.socketpair()
            process = context.Process(target=_worker_main, name=f"ppml-broker-worker-{index}",
                                      args=(config.source, index, listener, theirs, secret))
            process.start()
            theirs.close()
            workers.append(process)
            reader, writer = await asyncio.open_connection(sock=ours)
            tasks.append(asyncio.get_running_loop().create_task(serve_worker(ledger, reader, writer)))
        log.info("key broker listening on https://%s:%d with %d workers", config.host, config.port, len(workers))
        await _wait_for_workers(workers)
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for process in workers:
            if process.is_alive():
                process.kill()
        head = await ledger.stop()
    failed = [p.name for p in workers if p.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        raise ConfigError(f"key broker worker(s) {', '.join(failed)} exited unexpectedly; the broker stopped",
                          hint="see the workers' messages above; the audit log is intact")
    return head


async def _wait_for_workers(workers: list) -> None:
    """Until every worker has exited. SIGTERM/SIGINT here go on to the workers (which stop gracefully); a
    worker that dies on its own takes the others down."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def stop_all() -> None:
        stopping.set()
        for process in workers:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_all)
    try:
        while any(p.is_alive() for p in workers):
            if not stopping.is_set() and any(p.exitcode is not None for p in workers):
                log.error("a key broker worker exited unexpectedly; stopping the others")
                stop_all()
            await asyncio.sleep(0.2)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _worker_main(config_path: str, index: int, listener: socket.socket, ledger_socket: socket.socket,
                 secret: bytes) -> None:
    """A worker process: serve on the shared socket until SIGTERM, through the supervisor's ledger."""
    logging.basicConfig(level=os.environ.get("PPML_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="ppml: %(levelname)s: %(message)s")
    logging.getLogger("ppml").setLevel(min(logging.getLogger("ppml").getEffectiveLevel(), logging.INFO))
    config = load_config(config_path)
    _run(_serve_worker(config, index, listener, ledger_socket, secret))


async def _serve_worker(config: BrokerConfig, index: int, listener: socket.socket, ledger_socket: socket.socket,
                        secret: bytes) -> None:
    reader, writer = await asyncio.open_connection(sock=ledger_socket)
    ledger = RemoteLedger(reader, writer)
    service = _service(config, _open_backends(config), secret, ledger, worker=index)
    try:
        await _uvicorn(config, create_app(service, workers=config.workers)).serve(sockets=[listener])
        await service.counters()
    finally:
        service.close()
        ledger.close()
