"""What the broker benchmarks stand up: TLS, key stores with audit keys, broker processes, Redis, and the CPU
those processes use (from /proc)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers (SGX platform, harness)

FAST_KDF = {"memory_kib": 7 * 1024, "iterations": 5, "lanes": 1}  # the cheapest setting ppml accepts
PASSPHRASE = "broker benchmark passphrase"


def make_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and an ECDSA P-256 server certificate for 127.0.0.1: (ca, cert, key) paths."""
    from ppml.broker.scaffold import write_tls_files

    return write_tls_files(folder, ["localhost", "127.0.0.1"])


def make_keystore(folder: Path, *names: str):
    """A local key store with a fast KDF, primary keys ``names`` and ``broker-audit``, an audit key wrapped by
    the latter (``folder/audit-key.json``), the passphrase in ``passphrase`` (0600). Returns the store and its
    broker ``kms`` entry."""
    from ppml.broker.audit_key import create_audit_key
    from ppml.keys.local import LocalKms

    folder.mkdir(parents=True, exist_ok=True)
    kms = LocalKms(folder / "keystore.json", PASSPHRASE)
    kms.create_store(kdf=FAST_KDF)
    for name in (*names, "broker-audit"):
        kms.create_key(name)
    create_audit_key(folder / "audit-key.json", kms, "broker-audit")
    (folder / "passphrase").write_text(PASSPHRASE)
    os.chmod(folder / "passphrase", 0o600)
    return kms, {"backend": "local", "keystore": str(folder / "keystore.json"),
                 "passphrase": f"file:{folder / 'passphrase'}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a broker's workers), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes so far (processes gone since are not counted)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int, int]:
    """(busy, idle, steal) clock ticks of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, idle + iowait, steal


class Redis:
    """A throw-away redis-server on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (bash scripts/setup.sh system), or pass --skip-replicas")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Broker:
    """``ppml broker serve`` in a child process, configured in ``folder``; stopped with SIGTERM.

    ``settings`` are top-level configuration fields (``workers``, ``nonces``, ``verifiers``...). With
    ``baseline`` (the ``src`` folder of an older ppml), the broker runs that code, with only the fields it knew.
    """

    def __init__(self, folder: Path, pki: tuple[Path, Path, Path], kms: list[dict[str, Any]],
                 policies: list[dict[str, Any]], *, audit_key: Path, verifiers: dict[str, Any] | None = None,
                 limits: dict[str, Any] | None = None, settings: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, baseline: str | None = None) -> None:
        import yaml

        self.folder, self.ca, self.baseline = folder, pki[0], baseline
        folder.mkdir(parents=True, exist_ok=True)
        policy_dir = folder / "policies"
        policy_dir.mkdir()
        for policy in policies:
            (policy_dir / f"{policy['name']}.yaml").write_text(yaml.safe_dump(policy))
        self.port = free_port()
        self.audit_log = folder / "audit.jsonl"
        config = {"listen": {"host": "127.0.0.1", "port": self.port},
                  "tls": {"certificate": str(pki[1]), "private_key": str(pki[2])},
                  "kms": kms, "verifiers": verifiers or {"simulated": {}}, "policies": [str(policy_dir)],
                  "audit_log": str(self.audit_log), "limits": limits or {}, **(settings or {})}
        if baseline is None:
            config["audit_key"] = str(audit_key)
        self.config_path = folder / "broker.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.stderr_path = folder / "broker.stderr"
        self.env = {**os.environ, **(env or {})}
        if baseline is not None:
            self.env["PYTHONPATH"] = baseline
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Broker:
        import httpx

        self.process = subprocess.Popen(
            [sys.executable, "-m", "ppml.cli.main", "broker", "serve", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=self.stderr_path.open("wb"), env=self.env)
        context = ssl.create_default_context(cafile=str(self.ca))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited with {self.process.returncode}:\n{self.stderr_path.read_text()}")
            try:
                with httpx.Client(base_url=self.url, verify=context, timeout=5) as client:
                    if client.get("/v1/health").status_code == 200:
                        return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"broker did not answer within {timeout} s:\n{self.stderr_path.read_text()}")

    def pids(self) -> list[int]:
        return process_tree(self.process.pid) if self.process else []

    def counters(self) -> dict[str, int]:
        import httpx

        with httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.ca)), timeout=10) as c:
            return c.get("/v1/health").json().get("counters", {})

    def stop(self, timeout: float = 30.0) -> int:
        from broker_harness import terminate

        return terminate(self.process, timeout)

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    def stop_counters(self) -> dict[str, int]:
        stops = [e for e in self.audit() if e.get("event") == "stop"]
        return dict(stops[-1]["counters"]) if stops else {}
