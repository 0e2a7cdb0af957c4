"""A cluster of real network hosts for tests: storage, key broker, Spark master, two workers and a client.

Each host is a Linux network namespace (``ip netns``, from iproute2) with its own ``eth0``, address and
loopback; a seventh namespace, the switch, holds the bridge that joins them::

                     switch: bridge br0 (no address; tcpdump listens here)
      ┌──────────────┬──────────────┬──────┴───────┬──────────────┬──────────────┐
   storage        broker         master         worker1        worker2        client
   10.199.0.10    10.199.0.11    10.199.0.20    10.199.0.21    10.199.0.22    10.199.0.30
   Azurite        ppml broker    Spark master   Spark worker   Spark worker   Spark driver
   HTTPS :10000   serve, :8443   :7077          1 core, 1 GiB  1 core, 1 GiB  (ppml tpch run)

There is no route out of 10.199.0.0/24 and IPv6 is off, so nothing in the cluster can reach any other
address, and the bridge sees every packet that crosses between hosts. Hosts share the machine's files (a test
folder; each host has its own ``HOME`` and ``TMPDIR`` under it), so what makes a host separate is only its
network: every byte between hosts crosses the bridge.

- Storage: Azurite's Blob service over HTTPS, persisted on disk (so it can be stopped and started again).
- Broker: ``ppml broker serve`` holding the only key store (its passphrase in a file only the broker reads);
  simulated attestation; nonces live ``NONCE_LIFETIME`` seconds.
- Spark: master and workers with ``spark.authenticate`` and AES-GCM RPC encryption; the driver runs on the
  client host with ppml's secure session (I/O encryption too) and takes every key from the broker.
- TLS: one throw-away CA (``tests/keyvault_server.make_pki``) signs the certificate of storage and broker;
  every process trusts it through ``SSL_CERT_FILE`` (Azure SDK) and ``PPML_BROKER_CA`` (broker client).

Faults: :meth:`Cluster.kill_host` (every process of a host dies at once), :meth:`Network.cut` and
:meth:`Network.mend` (a host's cable), :meth:`Network.shape` (latency and loss, ``tests/netem.py``),
:meth:`Cluster.stop_storage`, :meth:`Cluster.kill_broker`, and workers started with a skewed clock
(``faketime``). :meth:`Network.capture` records every packet on the bridge with tcpdump.

Namespaces are named ``ppmlc-<tag>-<host>``; the tests use the tags ``t<pid>`` and ``d<pid>``, ``make cluster``
uses ``dev``. :meth:`Network.destroy` stops every process in them and deletes them (with the veth pairs, whose
two ends live in them), and raises if anything is left.
:func:`sweep_stale` removes the namespaces (and their processes) of test runs whose process is gone, so a
crashed run never blocks the next one. For people::

    python tests/netcluster.py up --dir /tmp/ppml-cluster     # prints how to use it (make cluster)
    python tests/netcluster.py down --dir /tmp/ppml-cluster   # make cluster-down
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PREFIX = "ppmlc-"
SUBNET = "10.199.0"
HOSTS = {"storage": 10, "broker": 11, "master": 20, "worker1": 21, "worker2": 22, "client": 30}
WORKERS = ("worker1", "worker2")
#: Fixed ports, so that a capture can say which service a flow belongs to.
PORTS = {"storage": 10000, "broker": 8443, "master": 7077, "worker": 7078, "driver": 7079, "driver blocks": 7080,
         "executor blocks": 7081, "master ui": 8080, "worker ui": 8081}
NONCE_LIFETIME = 10  # seconds; short, so that the clock test can outlive one
CLAIMS = {"app": "tpch-cluster"}
CONTAINER = "tpch"
INPUT = f"abfs://{CONTAINER}/enc"
KEY_NAME = "tpch"
_CLONE_NEWNET = 0x40000000


def address(host: str) -> str:
    return f"{SUBNET}.{HOSTS[host]}"


def describe(flow) -> str:
    """A captured flow (``wire.Flow``) in the cluster's words: ``worker1 → client:driver``."""
    names = {address(h): h for h in HOSTS}
    services = {port: service for service, port in PORTS.items()}

    def end(host: str, port: int) -> str:
        name = names.get(host, host)
        return f"{name}:{services[port]}" if port in services else name

    return f"{end(flow.src, flow.sport)} → {end(flow.dst, flow.dport)}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def namespace_support() -> str | None:
    """``None`` when this process can build the cluster's network, else why not and what to do."""
    if os.geteuid() != 0:
        return ("the cluster tests build network namespaces, which needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN): "
                "run them as root, e.g. `sudo make test`")
    if shutil.which("ip") is None:
        return "the cluster tests need the `ip` command: apt-get install iproute2"
    probe = f"{PREFIX}probe{os.getpid()}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode:
        return (f"cannot create a network namespace ({result.stderr.strip()}): run the tests as root with "
                "CAP_SYS_ADMIN and CAP_NET_ADMIN (in a container: --privileged)")
    _ip("netns", "del", probe, check=False)
    return None


def missing_tools() -> list[str]:
    """Debian packages the cluster needs that are not installed (``make system-packages`` installs them)."""
    needed = {"tcpdump": "tcpdump", "faketime": "faketime", "iptables": "iptables", "node": "nodejs"}
    return [package for command, package in needed.items() if shutil.which(command) is None]


def namespaces() -> list[str]:
    """The names of this machine's network namespaces."""
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def sweep_stale() -> list[str]:
    """Remove the namespaces (and their processes) of test runs whose process no longer exists."""
    removed = []
    for name in namespaces():
        match = re.fullmatch(rf"{PREFIX}(?:t|d|probe)(\d+)(-.*)?", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _remove_namespace(name)
            removed.append(name)
    return removed


def _remove_namespace(name: str, grace: float = 10.0) -> list[int]:
    """Stop every process of namespace ``name`` (SIGTERM, then SIGKILL after ``grace`` seconds) and delete it,
    with its veth ends; returns the ids of the processes it had."""
    seen: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split()]
        seen.update(pids)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline and _ip("netns", "pids", name, check=False).stdout.split():
            time.sleep(0.1)
    _ip("netns", "del", name, check=False)
    return sorted(seen)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still exists and is not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


class Network:
    """The seven namespaces of one cluster; :meth:`create` builds them, :meth:`destroy` removes every trace.

    ``grace``: seconds :meth:`destroy` gives a process between SIGTERM and SIGKILL."""

    def __init__(self, tag: str, *, grace: float = 10.0) -> None:
        self.tag = tag
        self.grace = grace
        self.switch = self.ns("switch")

    def ns(self, host: str) -> str:
        """The namespace of ``host`` (``"switch"`` names the switch's)."""
        return f"{PREFIX}{self.tag}-{host}"

    def create(self) -> None:
        self.destroy()  # what a stopped run with the same tag left behind
        self._namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host in HOSTS:
            self._namespace(self.ns(host))
            port = f"p-{host}"
            _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", self.ns(host))
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", self.ns(host), "addr", "add", f"{address(host)}/24", "dev", "eth0")
            _ip("-n", self.ns(host), "link", "set", "eth0", "up")

    def _namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        # Before any link exists: no IPv6 link-local chatter, so every packet on the bridge is the cluster's IPv4.
        off = "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"
        subprocess.run(["ip", "netns", "exec", name, "sh", "-c", off], check=True)

    def destroy(self) -> None:
        """Stop every process on the hosts and the switch and delete their namespaces (the veth pairs go with
        them: both ends live in these namespaces). Raises ``RuntimeError`` naming anything left behind."""
        mine = [n for n in namespaces() if n.startswith(f"{PREFIX}{self.tag}-")]
        pids = [pid for name in mine for pid in _remove_namespace(name, self.grace)]
        try:
            wait_for(lambda: not any(map(process_alive, pids)), 10, "the cluster's processes to exit")
        except TimeoutError:
            pass
        left = {"namespaces": [n for n in namespaces() if n.startswith(f"{PREFIX}{self.tag}-")],
                "processes": [pid for pid in pids if process_alive(pid)]}
        if any(left.values()):
            raise RuntimeError(f"the cluster {self.tag} was not torn down completely: {left}")

    # -- processes ------------------------------------------------------------------------------------

    def popen(self, host: str, argv: Sequence[str], *, env: dict[str, str], log: Path,
              cwd: Path | None = None) -> subprocess.Popen:
        """``argv`` on ``host`` (``ip netns exec`` execs it: the pid is the program's), output to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as output:
            return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], env=env, cwd=cwd,
                                    stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def run(self, host: str, argv: Sequence[str], *, env: dict[str, str],
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns(host), *argv], env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def pids(self, host: str) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.ns(host), check=False).stdout.split()]

    def call(self, host: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a thread of this process that has entered ``host``'s network namespace.

        ``setns`` moves only the calling thread, so the test process can open sockets on any host without
        starting a program there.
        """
        outcome: dict[str, Any] = {}

        def enter_and_call() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{self.ns(host)}") as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    outcome["error"] = OSError(ctypes.get_errno(), f"setns into {self.ns(host)}")
                    return
            try:
                outcome["value"] = function(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                outcome["error"] = exc

        thread = threading.Thread(target=enter_and_call, name=f"in {host}")
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def reachable(self, host: str, target: str, port: int, timeout: float = 1.0) -> bool:
        import socket

        def connect() -> bool:
            try:
                with socket.create_connection((address(target), port), timeout=timeout):
                    return True
            except OSError:
                return False

        return self.call(host, connect)

    # -- faults and observation ---------------------------------------------------------------------------

    def cut(self, host: str) -> None:
        """Unplug ``host``'s cable: its switch port goes down, packets to and from it vanish without a reset."""
        _ip("-n", self.switch, "link", "set", f"p-{host}", "down")

    def mend(self, host: str) -> None:
        _ip("-n", self.switch, "link", "set", f"p-{host}", "up")

    @contextmanager
    def shape(self, host: str, *, delay_ms: float, jitter_ms: float = 0.0, loss: float = 0.0,
              log: Path) -> Iterator[dict[str, int]]:
        """Latency and loss on ``host``'s link, both directions (``tests/netem.py``); yields the counts,
        filled in when the block ends."""
        counts: dict[str, int] = {}
        shaper = self.popen(host, [sys.executable, str(REPO / "tests" / "netem.py"), "--delay", str(delay_ms),
                                   "--jitter", str(jitter_ms), "--loss", str(loss)], env=dict(os.environ), log=log)
        rules = (["INPUT", "-i", "eth0"], ["OUTPUT", "-o", "eth0"])
        try:
            wait_for(lambda: "ready" in log.read_text() or shaper.poll() is not None, 10, f"netem on {host}")
            if shaper.poll() is not None:
                raise RuntimeError(f"netem on {host} exited: {log.read_text()}")
            for rule in rules:
                self._iptables(host, "-A", *rule, "-j", "NFQUEUE", "--queue-num", "0")
            yield counts
        finally:
            # Rules first: a queue nobody serves drops every packet.
            self._iptables(host, "-F")
            shaper.send_signal(signal.SIGTERM)
            shaper.wait(10)
            lines = log.read_text().splitlines()
            if lines and lines[-1].startswith("{"):
                counts.update(json.loads(lines[-1]))

    def _iptables(self, host: str, *args: str) -> None:
        result = subprocess.run(["ip", "netns", "exec", self.ns(host), "iptables", *args], capture_output=True,
                                text=True, check=False)
        if result.returncode:
            raise RuntimeError(f"iptables {' '.join(args)} on {host}: {result.stderr.strip()}")

    @contextmanager
    def capture(self, pcap: Path) -> Iterator[dict[str, int]]:
        """Every frame crossing the bridge, whole, into ``pcap``; yields tcpdump's counts (``captured``,
        ``dropped``), filled in when the block ends."""
        log = pcap.with_suffix(".log")
        counts: dict[str, int] = {}
        # -Z root: tcpdump would otherwise drop to its own user, who may not write into the test folder.
        tcpdump = self.popen("switch", ["tcpdump", "-i", "br0", "-n", "-s", "0", "-B", "32768", "-U", "-Z",
                                           "root", "-w", str(pcap)], env=dict(os.environ), log=log)
        try:
            wait_for(lambda: "listening on" in log.read_text() or tcpdump.poll() is not None, 15, "tcpdump")
            if tcpdump.poll() is not None:
                raise RuntimeError(f"tcpdump exited: {log.read_text()}")
            yield counts
        finally:
            time.sleep(0.5)  # the last frames' way through the capture buffer
            tcpdump.send_signal(signal.SIGINT)
            tcpdump.wait(20)
            text = log.read_text()
            for kind in ("captured", "dropped by kernel"):
                found = re.search(rf"(\d+) packets? {kind}", text)
                counts[kind.split()[0]] = int(found.group(1)) if found else -1


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``condition`` until it holds; a ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(interval)


# -- the cluster ------------------------------------------------------------------------------------------

#: Options of every JVM on the cluster (daemons, drivers, executors). They are short-lived and share two cores:
#: the quick compiler only, and one garbage-collector thread, spend less CPU on starting than on what it saves.
JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
#: Settings of every Spark application on the cluster: fixed ports (so captures can name flows), one core and
#: a small heap per executor, no driver UI, no locality wait, and :data:`JVM_OPTIONS`.
SPARK_CONF = {
    "spark.driver.extraJavaOptions": JVM_OPTIONS,
    "spark.executor.extraJavaOptions": JVM_OPTIONS,
    "spark.cores.max": "2",
    "spark.executor.memory": "768m",
    "spark.ui.enabled": "false",
    "spark.driver.host": address("client"),
    "spark.driver.port": str(PORTS["driver"]),
    "spark.driver.blockManager.port": str(PORTS["driver blocks"]),
    "spark.blockManager.port": str(PORTS["executor blocks"]),
    "spark.sql.shuffle.partitions": "2",  # one task per executor and stage: scale 0.01 needs no more
    # A task goes to the first free executor: no waiting (3 s by default) for the one holding more of its input.
    "spark.locality.wait": "0s",
}


class Job:
    """A ``ppml`` command running on a host; :meth:`wait` gives its exit code, stderr and ``--json`` report."""

    def __init__(self, process: subprocess.Popen, stdout: Path, stderr: Path) -> None:
        self.process, self.stdout_path, self.stderr_path = process, stdout, stderr
        self.returncode: int | None = None
        self.report: dict[str, Any] | None = None
        self.seconds = 0.0
        self.started_at = time.time()
        self._started = time.monotonic()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float) -> Job:
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise TimeoutError(f"{' '.join(self.process.args[4:7])} did not finish in {timeout:.0f} s:\n"
                               f"{self.stderr[-4000:]}") from None
        self.seconds = time.monotonic() - self._started
        text = self.stdout_path.read_text(errors="replace").strip()
        self.report = json.loads(text) if text.startswith("{") else None
        return self


class Cluster:
    """The six hosts and their services, with all their files under ``root``.

    :meth:`start` builds the network and starts every service; :meth:`load_tpch` puts encrypted TPC-H tables
    into storage; :meth:`tpch` runs queries from the client host; :meth:`heal` restarts whatever a fault
    stopped; :meth:`stop` removes every namespace and process.
    """

    def __init__(self, root: Path, tag: str, *, storage_backoff: float | None = None) -> None:
        """``storage_backoff``: seconds the Azure SDK waits before each retry of a storage request in the
        cluster's processes (``tests/netcluster_site``); ``None`` keeps the SDK's own back-off (15 s + 3^n s)."""
        import pyspark
        from conftest import AZURITE_DIR

        self.root = root.resolve()
        self.storage_backoff = storage_backoff
        self.net = Network(tag)
        self.processes: dict[str, subprocess.Popen] = {}
        self.spark_home = Path(pyspark.__file__).parent
        self.azurite = AZURITE_DIR / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
        self.auth_secret_file = self.root / "spark-auth.secret"
        self.data_key_file = self.root / "client" / "data-key.json"
        self.audit_log = self.root / "broker" / "audit.jsonl"
        self.audit_key = self.root / "broker" / "audit-key.json"  # its .pub beside it verifies the log
        self.plain: Path | None = None
        self.pki = None
        self.kms = self.data_key = self.wrapped = None
        self.passphrase = ""

    # -- addresses and environments -------------------------------------------------------------------------

    master_url = f"spark://{address('master')}:{PORTS['master']}"
    broker_url = f"https://{address('broker')}:{PORTS['broker']}"
    blob_endpoint = f"https://{address('storage')}:{PORTS['storage']}"

    @property
    def connection_string(self) -> str:
        from conftest import AZURITE_ACCOUNT, AZURITE_KEY

        return (f"DefaultEndpointsProtocol=https;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.blob_endpoint}/{AZURITE_ACCOUNT};")

    def log(self, host: str, name: str) -> Path:
        return self.root / host / "logs" / f"{name}.log"

    def env(self, host: str, **extra: str) -> dict[str, str]:
        """The environment of ``host``'s processes: built from nothing, so no key store or passphrase leaks in.

        Storage and the broker are reached over TLS signed by the cluster's CA (``SSL_CERT_FILE`` for the
        Azure SDK, ``PPML_BROKER_CA`` for the broker client); every key comes from the broker.
        """
        home, tmp = self.root / host / "home", self.root / host / "tmp"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(tmp),
               "LANG": "C.UTF-8", "NO_COLOR": "1", "PYTHONPATH": str(REPO / "src"),
               "SSL_CERT_FILE": str(self.pki.ca_path), "SPARK_LOCAL_IP": address(host),
               "SPARK_HOME": str(self.spark_home), "PYSPARK_PYTHON": sys.executable}
        if "JAVA_HOME" in os.environ:
            env["JAVA_HOME"] = os.environ["JAVA_HOME"]
        if self.storage_backoff is not None:
            env["PYTHONPATH"] = f"{REPO / 'tests' / 'netcluster_site'}{os.pathsep}{env['PYTHONPATH']}"
            env["PPML_TEST_STORAGE_BACKOFF"] = str(self.storage_backoff)
        if host in ("client", *WORKERS):
            env.update(AZURE_STORAGE_CONNECTION_STRING=self.connection_string, PPML_BROKER_URL=self.broker_url,
                       PPML_BROKER_CA=str(self.pki.ca_path), PPML_BROKER_ATTESTER="simulated",
                       PPML_BROKER_ATTESTER_SETTINGS=json.dumps({"claims": CLAIMS}))
        env.update(extra)
        return env

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self, *, services: Sequence[str] = ("storage", "broker", "master", *WORKERS)) -> Cluster:
        """Build the network and start ``services`` (hosts whose service to start; default: all)."""
        from keyvault_server import make_pki

        sweep_stale()
        self.net.create()
        for host in HOSTS:
            for folder in ("home", "tmp", "logs"):
                (self.root / host / folder).mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(self.root / "pki", addresses=[address("storage"), address("broker")])
        self.auth_secret_file.write_text(secrets.token_hex(32))
        self.auth_secret_file.chmod(0o600)
        self._make_keys()
        # Storage, broker and master need nothing of each other; the workers need the master. Each group
        # starts at once (their JVMs and Node start in parallel).
        starters = self._starters()
        for group in (("storage", "broker", "master"), WORKERS):
            with ThreadPoolExecutor(len(group)) as pool:
                started = [pool.submit(starters[host]) for host in group if host in services]
                for future in started:
                    future.result()
        return self

    def _starters(self) -> dict[str, Callable[[], None]]:
        """How to start the service of each host, in the order they depend on each other."""
        return {"storage": self.start_storage, "broker": self.start_broker, "master": self.start_master,
                **{w: (lambda w=w: self.start_worker(w)) for w in WORKERS}}

    def stop(self) -> None:
        self.net.destroy()
        self.processes.clear()

    def heal(self) -> None:
        """Undo every fault: cables back in, no shaping, and every service that died started again."""
        for host in HOSTS:
            self.net.mend(host)
        for host, start in self._starters().items():
            process = self.processes.get(host)
            if process is None or process.poll() is not None:
                self.kill_host(host)  # whatever else of the host still runs (executors, Python workers)
                start()

    def _make_keys(self) -> None:
        from keystores import make_data_key, make_keystore

        keys = self.root / "broker" / "keys"
        self.passphrase = secrets.token_urlsafe(24)
        self.kms = make_keystore(keys / "keystore.json", self.passphrase, KEY_NAME, passphrase_file=keys / "passphrase")
        self.data_key, self.wrapped = make_data_key(self.kms, KEY_NAME, self.data_key_file)

    def primary_key_material(self) -> bytes:
        """The primary key's bytes, read from the key store this cluster owns (to search captures for)."""
        return self.kms._material(KEY_NAME, "1")

    def _service(self, host: str, argv: Sequence[str], ready: Callable[[], bool], *, env: dict[str, str],
                 timeout: float = 90, cwd: Path | None = None) -> None:
        process = self.net.popen(host, argv, env=env, log=self.log(host, host), cwd=cwd)
        self.processes[host] = process
        wait_for(lambda: process.poll() is not None or ready(), timeout, f"the service on {host}", 0.3)
        if process.poll() is not None:
            raise RuntimeError(f"the service on {host} exited with {process.returncode}:\n"
                               f"{self.log(host, host).read_text(errors='replace')[-3000:]}")

    def kill_host(self, host: str) -> None:
        """Every process of ``host`` dies at once (SIGKILL), as when the machine fails."""
        for pid in self.net.pids(host):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not self.net.pids(host), 20, f"the processes of {host} to exit")
        process = self.processes.pop(host, None)
        if process is not None:
            process.wait()

    # -- storage ----------------------------------------------------------------------------------------------

    def start_storage(self) -> None:
        folder = self.root / "storage"
        if not self.azurite.is_file() or shutil.which("node") is None:
            raise RuntimeError(f"Azurite is not installed at {self.azurite} (or node is missing): "
                               "run `make setup` (scripts/setup.sh azurite)")
        argv = ["node", str(self.azurite), "--blobHost", address("storage"), "--blobPort", str(PORTS["storage"]),
                "--cert", str(self.pki.cert_path), "--key", str(self.pki.key_path), "--location", str(folder / "data"),
                "--debug", str(folder / "logs" / "requests.log"), "--disableTelemetry", "--skipApiVersionCheck",
                "--loose"]
        self._service("storage", argv, lambda: self.net.reachable("client", "storage", PORTS["storage"]),
                      env=self.env("storage"), cwd=folder)

    def stop_storage(self) -> None:
        """Stop Azurite the way an operator would (SIGTERM: it saves its metadata and exits)."""
        process = self.processes.pop("storage")
        process.send_signal(signal.SIGTERM)
        process.wait(30)

    def storage_log_size(self) -> int:
        path = self.root / "storage" / "logs" / "requests.log"
        return path.stat().st_size if path.exists() else 0

    def storage_requests(self, since: int = 0) -> str:
        """Azurite's request log (every request with its method and path) from byte ``since`` on."""
        path = self.root / "storage" / "logs" / "requests.log"
        if not path.exists():
            return ""
        with path.open("rb") as handle:
            handle.seek(since)
            return handle.read().decode(errors="replace")

    # -- the key broker ---------------------------------------------------------------------------------------

    def start_broker(self) -> None:
        import yaml

        folder = self.root / "broker"
        config = folder / "broker.yaml"
        kms = [{"backend": "local", "keystore": str(folder / "keys" / "keystore.json"),
                "passphrase": f"file:{folder / 'keys' / 'passphrase'}"}]
        if not config.exists():
            from broker_harness import make_audit_key

            make_audit_key(self.audit_key, kms)
            (folder / "policies").mkdir(parents=True, exist_ok=True)
            (folder / "policies" / "tpch.yaml").write_text(yaml.safe_dump(
                {"name": "tpch-cluster", "keys": [f"local:{KEY_NAME}"], "release_lifetime": "10m",
                 "allow": [{"type": "simulated", "claims": CLAIMS}]}))
            config.write_text(yaml.safe_dump({
                "listen": {"host": address("broker"), "port": PORTS["broker"]},
                "tls": {"certificate": str(self.pki.cert_path), "private_key": str(self.pki.key_path)},
                "kms": kms,
                "verifiers": {"simulated": {}},
                "policies": [str(folder / "policies")],
                "audit_log": str(self.audit_log),
                "audit_key": str(self.audit_key),
                "limits": {"nonce_lifetime": f"{NONCE_LIFETIME}s"},
            }))
        self._service("broker", [sys.executable, "-m", "ppml.cli.main", "broker", "serve", "--config", str(config)],
                      self._broker_healthy, env=self.env("broker"))

    def _broker_healthy(self) -> bool:
        import httpx

        def health() -> bool:
            context = ssl.create_default_context(cafile=str(self.pki.ca_path))
            try:
                return httpx.get(f"{self.broker_url}/v1/health", verify=context, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        return self.net.call("client", health)

    def kill_broker(self) -> None:
        self.kill_host("broker")

    def audit_entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    # -- Spark ------------------------------------------------------------------------------------------------

    def _spark_env(self, host: str) -> dict[str, str]:
        secret = self.auth_secret_file.read_text()
        # The daemons' own RPC is authenticated and encrypted like the applications'. A worker that stops
        # answering is given up after 10 s, not Spark's default 60 s (workers beat every timeout / 4).
        daemon = (f"-Dspark.authenticate=true -Dspark.authenticate.secret={secret} "
                  "-Dspark.network.crypto.enabled=true -Dspark.network.crypto.cipher=AES/GCM/NoPadding "
                  f"-Dspark.worker.timeout=10 {JVM_OPTIONS}")
        return self.env(host, SPARK_LOG_DIR=str(self.root / host / "logs"), SPARK_DAEMON_JAVA_OPTS=daemon,
                        SPARK_LOCAL_DIRS=str(self.root / host / "tmp"),
                        SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false")

    def start_master(self) -> None:
        argv = [str(self.spark_home / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master",
                "--host", address("master"), "--port", str(PORTS["master"]), "--webui-port", str(PORTS["master ui"])]
        self._service("master", argv, lambda: self.net.reachable("client", "master", PORTS["master"]),
                      env=self._spark_env("master"))

    def start_worker(self, host: str, *, clock: str | None = None) -> None:
        """A Spark worker on ``host``; ``clock`` (faketime's ``-f`` offset, e.g. ``+6h``) skews the clock of
        the worker and of every executor and Python process it starts."""
        argv = [str(self.spark_home / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker",
                self.master_url, "--host", address(host), "--port", str(PORTS["worker"]),
                "--webui-port", str(PORTS["worker ui"]), "--cores", "1", "--memory", "1g",
                "--work-dir", str(self.root / host / "work")]
        if clock:
            argv = ["faketime", "-f", clock, *argv]
        self._service(host, argv, lambda: address(host) in self.alive_workers(), env=self._spark_env(host))

    def alive_workers(self) -> set[str]:
        """Addresses of the workers the master counts as alive (from its web UI's JSON)."""
        import urllib.request

        def ask() -> set[str]:
            try:
                with urllib.request.urlopen(f"http://{address('master')}:{PORTS['master ui']}/json/",
                                            timeout=2) as answer:
                    state = json.load(answer)
            except OSError:
                return set()
            return {w["host"] for w in state.get("workers", []) if w.get("state") == "ALIVE"}

        return self.net.call("client", ask)

    def executor_logs(self, host: str, *, since: float = 0.0) -> str:
        """What the executors on ``host`` of applications started after ``since`` (epoch seconds) logged."""
        apps = [a for a in (self.root / host / "work").glob("app-*") if a.stat().st_mtime >= since]
        return "".join(p.read_text(errors="replace") for app in sorted(apps) for p in sorted(app.glob("*/stderr")))

    # -- data and jobs ----------------------------------------------------------------------------------------

    def ppml(self, host: str, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        """``ppml ARGS`` on ``host`` with that host's environment."""
        return self.net.run(host, [str(Path(sys.executable).with_name("ppml")), *args], env=self.env(host, **env),
                            timeout=timeout)

    def python(self, host: str, code: str, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return self.net.run(host, [sys.executable, "-c", code, *args], env=self.env(host, **env), timeout=timeout)

    def load_tpch(self, plain: Path) -> None:
        """Encrypt the ``.tbl`` tables of ``plain`` with the cluster's data key and upload them to storage;
        ``plain`` stays the client's plaintext for checking answers."""
        from ppml.io.files import encrypt

        self.plain = plain
        encrypted = self.root / "client" / "encrypted"
        encrypt(str(plain), str(encrypted), key=self.data_key, envelope=(self.wrapped,), segment_size=64 * 1024,
                force=True)
        made = self.python("client", "import adlfs, os; adlfs.AzureBlobFileSystem(connection_string="
                                     f"os.environ['AZURE_STORAGE_CONNECTION_STRING']).mkdir({CONTAINER!r})")
        if made.returncode:
            raise RuntimeError(f"cannot create container {CONTAINER}: {made.stderr[-2000:]}")
        copied = self.ppml("client", "cp", "-r", str(encrypted), INPUT)
        if copied.returncode:
            raise RuntimeError(f"ppml cp to storage failed: {copied.stderr[-2000:]}")

    def tpch(self, out: str, queries: Sequence[int], *, name: str, conf: dict[str, str] | None = None) -> Job:
        """``ppml tpch run`` of ``queries`` from the client host: encrypted input from storage, encrypted
        results to ``out`` (an ``abfs://`` URL), every answer checked against DuckDB on the client's plaintext."""
        argv = [str(Path(sys.executable).with_name("ppml")), "tpch", "run", INPUT, out, "aes_gcm_stream",
                "aes_gcm_stream", *map(str, queries), "--check", "--plaintext", str(self.plain),
                "--data-key", str(self.data_key_file), "--master", self.master_url,
                "--auth-secret-file", str(self.auth_secret_file), "--scale", "0.01", "--json", "--no-warm-up"]
        for key, value in {**SPARK_CONF, **(conf or {})}.items():
            argv += ["--conf", f"{key}={value}"]
        stdout, stderr = self.root / "client" / "logs" / f"{name}.out", self.log("client", name)
        with stdout.open("wb") as out_file, stderr.open("wb") as err_file:
            process = subprocess.Popen(["ip", "netns", "exec", self.net.ns("client"), *argv], env=self.env("client"),
                                       stdin=subprocess.DEVNULL, stdout=out_file, stderr=err_file,
                                       start_new_session=True)
        return Job(process, stdout, stderr)


# -- for people: make cluster / make cluster-down ---------------------------------------------------------------

_DEV_TAG = "dev"
_MARK = ".ppml-cluster"  # marks a folder `up` made, so that `up` and `down` only ever delete such a folder


def _host_scripts(cluster: Cluster, folder: Path) -> None:
    """``folder/bin/HOST CMD...`` runs a command on HOST with that host's environment."""
    (folder / "bin").mkdir(exist_ok=True)
    for host in HOSTS:
        script = folder / "bin" / host
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in cluster.env(host).items())
        script.write_text(f"#!/bin/sh\n# Runs a command on the cluster's {host} host ({address(host)}).\n"
                          f"exec ip netns exec {cluster.net.ns(host)} env -i {assignments} \"$@\"\n")
        script.chmod(0o755)


def up(folder: Path, scale: float) -> None:
    from ppml.tpch.gen import generate

    problem = namespace_support()
    if problem:
        raise SystemExit(f"netcluster: {problem}")
    if missing_tools():
        raise SystemExit(f"netcluster: missing Debian packages {missing_tools()}: run `make system-packages`")
    Network(_DEV_TAG).destroy()
    if (folder / _MARK).exists():
        shutil.rmtree(folder)
    elif folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"netcluster: {folder} is not empty and was not made by `up`: choose another --dir")
    folder.mkdir(parents=True)
    (folder / _MARK).touch()
    cluster = Cluster(folder, _DEV_TAG)
    cluster.start()
    plain = folder / "plain"
    generate(scale, plain)
    cluster.load_tpch(plain)
    _host_scripts(cluster, folder)
    ppml = Path(sys.executable).with_name("ppml")
    hosts = "\n".join(f"  {h:<8} {address(h):<12} {cluster.net.ns(h)}" for h in HOSTS)
    conf = " ".join(f"--conf {shlex.quote(f'{k}={v}')}" for k, v in SPARK_CONF.items())
    print(f"""The ppml test cluster is up; its files are in {folder}.

{hosts}
  storage:  Azurite {cluster.blob_endpoint} (container {CONTAINER}: encrypted TPC-H scale {scale:g} in {INPUT})
  broker:   {cluster.broker_url} (audit log {cluster.audit_log})
  Spark:    {cluster.master_url}, secret in {cluster.auth_secret_file}

Run commands on a host with {folder}/bin/HOST (that host's environment: storage, broker and CA settings):

  {folder}/bin/client {ppml} tpch run {INPUT} abfs://{CONTAINER}/results aes_gcm_stream aes_gcm_stream 1 6 \\
      --check --plaintext {plain} --data-key {cluster.data_key_file} --master {cluster.master_url} \\
      --auth-secret-file {cluster.auth_secret_file} --scale {scale:g} {conf}

Watch the wire:   ip netns exec {cluster.net.switch} tcpdump -i br0 -n
Cut a cable:      ip -n {cluster.net.switch} link set p-worker2 down   (and up)
Logs:             {folder}/HOST/logs/
Tear it down:     make cluster-down   (removes {folder} too)
""")


def down(folder: Path) -> None:
    Network(_DEV_TAG).destroy()
    if (folder / _MARK).exists():
        shutil.rmtree(folder)
    print(f"The ppml test cluster is down and {folder} is removed.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop the ppml test cluster (network namespaces).")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="build the network, start every service, load TPC-H")
    start.add_argument("--scale", type=float, default=0.01, help="TPC-H scale factor (0.01)")
    stop = commands.add_parser("down", help="stop every process, remove the namespaces and the files")
    for command in (start, stop):
        command.add_argument("--dir", type=Path, default=Path("/tmp/ppml-cluster"), help="files of the cluster")
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.dir, args.scale)
    else:
        down(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
