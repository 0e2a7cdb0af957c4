"""Runs a real key broker (``ppml broker serve``, uvicorn over TLS) in a child process for tests.

The broker holds a local key store made here (fast KDF) unless given other KMS entries; it trusts a
throw-away CA from :func:`keyvault_server.make_pki`. ``BrokerProcess.stop`` sends SIGTERM, like an
orchestrator, and returns the exit code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import keystores
import yaml
from keyvault_server import Pki, make_pki

from ppml.keys.local import LocalKms

PASSPHRASE = "broker test passphrase"
SIMULATED_POLICY = {"name": "dev", "keys": ["local:tpch*"], "release_lifetime": "10m",
                    "allow": [{"type": "simulated", "claims": {"app": "tpch"}}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_keystore(folder: Path, *names: str) -> LocalKms:
    """``folder/keystore.json`` with keys ``names``, its passphrase in ``folder/passphrase``."""
    return keystores.make_keystore(folder / "keystore.json", PASSPHRASE, *names, passphrase_file=folder / "passphrase")


class BrokerProcess:
    """A broker configured in ``folder``; ``start()`` waits until its health endpoint answers."""

    def __init__(self, folder: Path, *, policies: list[dict[str, Any]] | None = None,
                 verifiers: dict[str, Any] | None = None, kms: list[dict[str, Any]] | None = None,
                 limits: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(folder / "tls")
        self.port = free_port()
        self.audit_log = folder / "audit.jsonl"
        policy_dir = folder / "policies"
        policy_dir.mkdir(exist_ok=True)
        for policy in policies or [SIMULATED_POLICY]:
            (policy_dir / f"{policy['name']}.yaml").write_text(yaml.safe_dump(policy))
        if kms is None:
            self.keystore = make_keystore(folder / "keys", "tpch", "other")
            kms = [{"backend": "local", "keystore": str(folder / "keys" / "keystore.json"),
                    "passphrase": f"file:{folder / 'keys' / 'passphrase'}"}]
        config = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "tls": {"certificate": str(self.pki.cert_path), "private_key": str(self.pki.key_path)},
            "kms": kms,
            "verifiers": verifiers if verifiers is not None else {"simulated": {}},
            "policies": [str(policy_dir)],
            "audit_log": str(self.audit_log),
            "limits": limits or {},
            **(extra or {}),
        }
        self.config_path = folder / "broker.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.stderr_path = folder / "broker.stderr"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.pki.ca_path)),
                            timeout=30)

    def start(self, timeout: float = 30.0) -> BrokerProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ppml.cli.main", "broker", "serve", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=self.stderr_path.open("wb"), env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited with {self.process.returncode}:\n{self.stderr}")
            try:
                with self.client() as client:
                    if client.get("/v1/health").status_code == 200:
                        return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"broker did not answer within {timeout} s:\n{self.stderr}")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def audit_entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    @classmethod
    def configured(cls, config_path: Path, *, port: int, ca_path: Path, env: dict[str, str] | None = None,
                   audit_log: Path | None = None) -> BrokerProcess:
        """A broker for a configuration file written elsewhere (``ppml broker init``)."""
        process = cls.__new__(cls)
        process.folder, process.config_path, process.port = config_path.parent, config_path, port
        process.pki = Pki(ca_path, ca_path, ca_path)
        process.audit_log = audit_log or config_path.parent / "audit" / "broker.jsonl"
        process.env = {**os.environ, **(env or {})}
        process.process, process.stderr_path = None, config_path.parent / "broker.stderr"
        return process

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
