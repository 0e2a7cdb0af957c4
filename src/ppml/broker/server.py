"""Running the key broker: one process or a supervisor with worker processes, and a graceful stop.

Connections (TLS, deadlines, the per-address cap) are :mod:`ppml.broker.connections`' business.

**Processes.** With ``workers: 1`` one process serves and holds the ledger. With ``workers: N`` the process
started is a supervisor: it reserves the port, opens the ledger (:mod:`ppml.broker.ledger`), and starts N
worker processes (spawned, so each opens its own KMS sessions), each listening on the port with
``SO_REUSEPORT`` (the kernel spreads new connections over them evenly, where one shared accept queue lets
whichever worker wakes first take them all) and holding a socket pair to the ledger. Each worker keeps its
own key cache and rate limiter (with 1/N of the rate). The nonce secret, random unless configured, goes to
the workers through the spawn pipe, never through the command line or the environment. If a worker dies,
the supervisor stops the others and exits non-zero: an orchestrator restarts the replica whole.

**Stopping.** SIGTERM or Ctrl-C stops accepting connections, lets in-flight requests finish (5 s), closes
idle connections, forgets cached keys, appends a ``stop`` entry with the counters, publishes the last head
and returns the audit log's head hash.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
from typing import Any

from ppml.attest.evidence import open_verifier
from ppml.broker.app import create_app
from ppml.broker.audit_key import load_audit_signer
from ppml.broker.config import BrokerConfig, load_config
from ppml.broker.connections import uvicorn_server
from ppml.broker.heads import open_sink
from ppml.broker.ledger import RefusalBudget, open_ledger
from ppml.broker.ledger_link import RemoteLedger, serve_worker
from ppml.broker.nonces import MemoryUsedNonces, NonceIssuer, RedisUsedNonces, UsedNonces, derive_secret
from ppml.broker.service import BrokerService
from ppml.errors import ConfigError
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.kms import KeyManagementService
from ppml.keys.settings import KeySettings, read_secret_source

__all__ = ["serve"]

log = logging.getLogger("ppml.broker")


def _bind(config: BrokerConfig, *, shared: bool = False, listen: bool = True) -> socket.socket:
    """The broker's socket on ``listen.host:port``; ``shared``: one of the workers' ``SO_REUSEPORT`` group
    (the supervisor binds one without listening, which keeps the port from other programs)."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.host, config.port))
        if listen:
            sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"the key broker could not listen on {config.host}:{config.port}: {exc.strerror}",
                          hint="is another process using the port? choose another with listen.port") from None
    return sock


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
    listener = _bind(config, shared=config.workers > 1, listen=config.workers == 1)
    secret = _nonce_secret(config)
    try:
        if config.workers == 1:
            return _run(_serve_alone(config, listener, secret))
        return _run(_supervise(config, secret))  # the workers bind their own; this one keeps the port
    finally:
        listener.close()


async def _serve_alone(config: BrokerConfig, listener: socket.socket, secret: bytes) -> str:
    backends = _open_backends(config)
    ledger = await _open_ledger(config, backends)
    service = None
    try:
        service = _service(config, backends, secret, ledger)
        server = uvicorn_server(config, create_app(service))
        log.info("key broker listening on https://%s:%d", config.host, config.port)
        await server.serve(sockets=[listener])
        await service.counters()
    finally:
        if service is not None:
            service.close()
        head = await ledger.stop()
    return head


async def _supervise(config: BrokerConfig, secret: bytes) -> str:
    ledger = await _open_ledger(config, _open_backends(config))
    context = multiprocessing.get_context("spawn")
    workers, tasks = [], []
    try:
        for index in range(config.workers):
            ours, theirs = socket.socketpair()
            process = context.Process(target=_worker_main, name=f"ppml-broker-worker-{index}",
                                      args=(config.source, index, theirs, secret))
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


def _worker_main(config_path: str, index: int, ledger_socket: socket.socket, secret: bytes) -> None:
    """A worker process: serve on the shared socket until SIGTERM, through the supervisor's ledger."""
    logging.basicConfig(level=os.environ.get("PPML_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="ppml: %(levelname)s: %(message)s")
    logging.getLogger("ppml").setLevel(min(logging.getLogger("ppml").getEffectiveLevel(), logging.INFO))
    config = load_config(config_path)
    _run(_serve_worker(config, index, _bind(config, shared=True), ledger_socket, secret))


async def _serve_worker(config: BrokerConfig, index: int, listener: socket.socket, ledger_socket: socket.socket,
                        secret: bytes) -> None:
    reader, writer = await asyncio.open_connection(sock=ledger_socket)
    ledger = RemoteLedger(reader, writer)
    service = _service(config, _open_backends(config), secret, ledger, worker=index)
    try:
        await uvicorn_server(config, create_app(service, workers=config.workers)).serve(sockets=[listener])
        await service.counters()
    finally:
        service.close()
        ledger.close()
