"""Runs a real key broker (``ppml broker serve``, uvicorn over TLS) in a child process for tests.

The broker holds a local key store made here (fast KDF) unless given other KMS entries; it trusts a
throw-away CA from :func:`keyvault_server.make_pki`; its audit key (``audit-key.json``, verification key
``audit-key.json.pub``) is wrapped by the primary key ``broker-audit`` of its first KMS backend.
``BrokerProcess.stop`` sends SIGTERM, like an orchestrator, and returns the exit code.
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
import pytest
import yaml
from keyvault_server import Pki, make_pki

from ppml.broker.audit_key import create_audit_key, load_verification_key, public_key_path
from ppml.errors import NotFoundError
from ppml.keys.local import LocalKms
from ppml.keys.settings import KeySettings

PASSPHRASE = "broker test passphrase"
SIMULATED_POLICY = {"name": "dev", "keys": ["local:tpch*"], "release_lifetime": "10m",
                    "allow": [{"type": "simulated", "claims": {"app": "tpch"}}]}


@pytest.fixture(autouse=True)
def quiet_simulation():
    """Simulated evidence warns on purpose (ignored here), and no key a client released before is cached.

    Autouse in every test module that imports it."""
    import warnings

    from ppml.errors import PpmlInsecureWarning
    from ppml.keys.broker_client import clear_releases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PpmlInsecureWarning)
        clear_releases()
        yield


def terminate(process: subprocess.Popen | None, timeout: float) -> int:
    """Stop a broker the way an orchestrator does (SIGTERM, then SIGKILL after ``timeout``); its exit code."""
    if process is None or process.poll() is not None:
        return process.returncode if process else 0
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_audit_key(path: Path, kms: list[dict[str, Any]]) -> Path:
    """The audit key ``path`` (and its ``.pub``), wrapped by ``broker-audit`` of the first backend of ``kms``."""
    settings, names = KeySettings.from_backend_entries(kms, where="test broker")
    backend = settings.backends(names[:1])[names[0]]
    try:
        backend.describe_key("broker-audit")
    except NotFoundError:
        backend.create_key("broker-audit")
    create_audit_key(path, backend, "broker-audit")
    return path


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
        self.audit_key = folder / "audit-key.json"
        if not self.audit_key.exists():
            make_audit_key(self.audit_key, kms)
        config = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "tls": {"certificate": str(self.pki.cert_path), "private_key": str(self.pki.key_path)},
            "kms": kms,
            "verifiers": verifiers if verifiers is not None else {"simulated": {}},
            "policies": [str(policy_dir)],
            "audit_log": str(self.audit_log),
            "audit_key": str(self.audit_key),
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
        return terminate(self.process, timeout)

    def audit_entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    def config_kms(self) -> list[dict[str, Any]]:
        """This broker's ``kms`` entries (to give another broker the same key store)."""
        return yaml.safe_load(self.config_path.read_text())["kms"]

    def verification_key(self):
        """The audit verification key (the ``.pub`` beside the audit key)."""
        return load_verification_key(public_key_path(self.audit_key))

    @classmethod
    def configured(cls, config_path: Path, *, port: int, ca_path: Path, env: dict[str, str] | None = None,
                   audit_log: Path | None = None) -> BrokerProcess:
        """A broker for a configuration file written elsewhere (``ppml broker init``)."""
        process = cls.__new__(cls)
        process.folder, process.config_path, process.port = config_path.parent, config_path, port
        process.pki = Pki(ca_path, ca_path, ca_path)
        process.audit_log = audit_log or config_path.parent / "audit" / "broker.jsonl"
        process.audit_key = config_path.parent / "audit" / "audit-key.json"
        process.env = {**os.environ, **(env or {})}
        process.process, process.stderr_path = None, config_path.parent / "broker.stderr"
        return process

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def recompute_chain(lines: list[str], keep, sign=None) -> list[str]:
    """The attack: keep some entries, renumber and re-chain them, recompute every hash (and, with ``sign``,
    sign with a key of the attacker's; without, keep the old signatures)."""
    import hashlib

    from ppml.broker.audit import GENESIS, canonical

    kept = [json.loads(line) for line in lines if keep(json.loads(line))]
    prev, out = GENESIS, []
    for seq, entry in enumerate(kept):
        entry.update(seq=seq, prev=prev)
        body = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
        entry["hash"] = hashlib.sha256(canonical(body)).hexdigest()
        if sign is not None:
            entry["sig"] = sign.sign(entry["hash"])
        prev = entry["hash"]
        out.append(canonical(entry).decode())
    return out
