"""Running the key broker: uvicorn over TLS, graceful shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import signal
import ssl

from ppml.broker.app import create_app
from ppml.broker.config import BrokerConfig
from ppml.broker.service import BrokerService
from ppml.errors import ConfigError

__all__ = ["serve"]

log = logging.getLogger("ppml.broker")
GRACEFUL_SHUTDOWN_SECONDS = 5
# Forward-secret AEAD suites only for TLS 1.2 (TLS 1.3 suites are all AEAD); older TLS is off by default.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but returning after a graceful shutdown instead of re-raising the signal, so
        the broker closes its audit log and the process exits 0."""

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def shutdown(self, sockets=None):
            # Idle keep-alive connections would hold the TLS close handshake open until the grace period ends.
            for connection in list(self.server_state.connections):
                cycle = getattr(connection, "cycle", None)
                if cycle is None or getattr(cycle, "response_complete", False):
                    connection.transport.abort()
            await super().shutdown(sockets)

    return Server


def serve(config: BrokerConfig) -> str:
    """Serve until SIGINT/SIGTERM; in-flight requests get 5 s to finish. Returns the audit log head."""
    import uvicorn

    service = BrokerService(config)
    try:
        settings = uvicorn.Config(
            create_app(service), host=config.host, port=config.port,
            ssl_certfile=config.certificate, ssl_keyfile=config.private_key,
            ssl_ca_certs=config.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED if config.client_ca else ssl.CERT_NONE,
            ssl_ciphers=_TLS12_CIPHERS,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, limit_concurrency=config.limits.max_concurrency,
            h11_max_incomplete_event_size=16 * 1024, server_header=False, proxy_headers=False,
            access_log=False, log_level="warning", lifespan="off",
        )
        server = _server_class()(settings)
        log.info("key broker listening on https://%s:%d", config.host, config.port)
        try:
            server.run()
        except ssl.SSLError as exc:
            raise ConfigError(f"cannot use the TLS certificate {config.certificate} with key {config.private_key}: "
                              f"{exc.reason or exc}") from None
        if not server.started:
            raise ConfigError(f"the key broker could not listen on {config.host}:{config.port}",
                              hint="is another process using the port? choose another with listen.port")
    finally:
        head = service.close()
    return head
