"""ppml across real network hosts: what crosses the wire, and what happens when hosts and links fail.

The cluster (tests/netcluster.py) has storage (Azurite over HTTPS), the key broker, a Spark master, two
one-core workers and the client (the driver) on separate network-namespace hosts joined by a bridge. The
TPC-H tables (scale 0.01, a canary planted in two free-text columns) are stored encrypted in Azurite; the
data key in their headers is wrapped by the broker's key store, and no other host has a key store or a
passphrase, so every key comes from the broker. Every job's answers are checked against DuckDB on the
client's plaintext. One cluster serves the module; each test starts by undoing the faults of the one before.

docs/cluster.md has the table of faults and outcomes and the capture results.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("pyspark")
pytest.importorskip("adlfs")

from conftest import AZURITE_KEY
from netcluster import (
    CONTAINER,
    HOSTS,
    INPUT,
    NONCE_LIFETIME,
    PORTS,
    REPO,
    WORKERS,
    Cluster,
    Network,
    address,
    describe,
    missing_tools,
    namespace_support,
    namespaces,
    process_alive,
    wait_for,
)
from wire import forms, read_capture, tls_records

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.xdist_group("cluster")]

_WHY_NOT = namespace_support()
if _WHY_NOT:
    pytest.skip(f"cluster tests skipped: {_WHY_NOT}", allow_module_level=True)

CANARY = f"CANARY{uuid.uuid4().hex}"
# Every join a shuffle, so that rows (canaries included) travel between executors.
NO_BROADCAST = {"spark.sql.autoBroadcastJoinThreshold": "-1"}
# For captures: nothing but encryption between a canary and the wire. Compression would hide plaintext from a
# byte search, and adaptive execution and reduce locality keep shuffled rows on the host that made them.
EXPOSED = {**NO_BROADCAST, "spark.shuffle.compress": "false", "spark.shuffle.spill.compress": "false",
           "spark.broadcast.compress": "false", "spark.sql.adaptive.enabled": "false",
           "spark.shuffle.reduceLocality.enabled": "false"}
PROBE = str(REPO / "tests" / "broker_probe.py")


def _plant(plain: Path) -> None:
    """The canary at the front of every customer and order comment (Q10 returns customer comments)."""
    for table, column in (("customer", 7), ("orders", 8)):
        path = plain / f"{table}.tbl"
        rows = []
        for line in path.read_text().splitlines(keepends=True):
            fields = line.split("|")
            fields[column] = f"{CANARY} {fields[column]}"
            rows.append("|".join(fields))
        path.write_text("".join(rows))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tpch_plain, cluster_slot):
    missing = missing_tools()
    if missing:
        pytest.fail(f"the cluster tests need the Debian packages {missing}: run `make system-packages` "
                    "(scripts/setup.sh system)")
    root = tmp_path_factory.mktemp("netcluster")
    # A request to stopped storage fails after the Azure SDK's 3 retries about 2 s apart, not 15 s + 3^n s apart.
    cluster = Cluster(root, f"t{os.getpid()}", storage_backoff=1)
    # A CI time-out stops the run with SIGTERM, which would end this process without tearing the cluster down:
    # as an interrupt, pytest still runs this fixture's clean-up.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        cluster.start()
        plain = root / "client" / "plain"
        shutil.copytree(tpch_plain, plain)
        _plant(plain)
        cluster.load_tpch(plain)
        yield cluster
    finally:
        try:
            cluster.stop()  # raises if any namespace or process is left
        finally:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}: tearing the cluster down")


@pytest.fixture
def healthy(cluster):
    """The cluster with every cable in, no shaping, and every service running."""
    cluster.heal()
    return cluster


def _answers_match(job, queries) -> None:
    assert job.returncode == 0, job.stderr[-4000:]
    assert job.report is not None, job.stderr[-4000:]
    runs = job.report["queries"]
    assert [r["query"] for r in runs] == [f"Q{q:02d}" for q in queries]
    bad = {r["query"]: r["mismatches"][:3] for r in runs if not r["checked"] or r["mismatches"]}
    assert not bad, bad


def _event_log(cluster: Cluster) -> dict[str, str]:
    """Spark settings that write the driver's event log on the client host (uncompressed JSON lines)."""
    folder = cluster.root / "client" / "events"
    folder.mkdir(exist_ok=True)
    return {"spark.eventLog.enabled": "true", "spark.eventLog.dir": str(folder), "spark.eventLog.compress": "false",
            "spark.eventLog.rolling.enabled": "false"}


def _events(cluster: Cluster, job) -> list[dict]:
    """The events of the application ``job`` ran (the newest event log)."""
    logs = [p for p in (cluster.root / "client" / "events").glob("app-*") if p.stat().st_mtime >= job.started_at]
    logs.sort(key=lambda p: p.stat().st_mtime)
    assert logs, "no event log was written"
    return [json.loads(line) for line in logs[-1].read_text().splitlines()]


def _holds_map_output(cluster: Cluster, host: str, job) -> bool:
    """Whether an executor of ``job`` on ``host`` has finished a task. Jobs run without a warm-up, so that is a
    task of the query's first stages, a map stage whose shuffle output later stages need."""
    return bool(re.search(r"Finished task \S+ in stage \d+\.\d+ \(TID \d+\)",
                          cluster.executor_logs(host, since=job.started_at)))


def _releases_since(cluster: Cluster, started: float) -> list[dict]:
    from datetime import datetime

    return [e for e in cluster.audit_entries() if e["event"] == "release"
            and datetime.fromisoformat(e["time"]).timestamp() >= started - 1]


# -- tear-down -----------------------------------------------------------------------------------------------


def test_a_torn_down_network_leaves_no_namespace_process_or_link(tmp_path):
    """Tear-down stops every process on the hosts (one ignoring SIGTERM, one with a child) and removes every
    namespace and veth, and says so if it cannot (the module's cluster is checked the same way at its end)."""
    net = Network(f"d{os.getpid()}", grace=1)  # SIGKILL 1 s after SIGTERM (10 s by default)
    started = []
    try:
        net.create()
        env = dict(os.environ)
        started.append(net.popen("worker1", ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"], env=env,
                                 log=tmp_path / "stubborn.log"))
        started.append(net.popen("client", ["sh", "-c", "sleep 600 & wait"], env=env, log=tmp_path / "parent.log"))
        wait_for(lambda: len(net.pids("worker1")) >= 2 and len(net.pids("client")) == 2, 10, "the processes")
        pids = net.pids("worker1") + net.pids("client")
        assert set(namespaces()) >= {net.ns(h) for h in HOSTS} | {net.switch}
    finally:
        net.destroy()
        for process in started:
            process.wait(10)
    assert not [n for n in namespaces() if n.startswith(net.ns(""))]
    assert not [pid for pid in pids if process_alive(pid)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert not re.search(r"\bp-(storage|broker|master|worker\d|client)\b", links), links


# -- the wire ----------------------------------------------------------------------------------------------


def _secrets(cluster: Cluster) -> dict[str, list[bytes]]:
    """What must never cross the wire in the clear, in every encoding it could take."""
    return {
        "canary": [CANARY.encode()],
        "data key": forms(cluster.data_key.unsafe_material()),
        "primary key": forms(cluster.primary_key_material()),
        "key store passphrase": [cluster.passphrase.encode()],
        "Spark authentication secret": [cluster.auth_secret_file.read_text().encode()],
        "storage account key": forms(base64.b64decode(AZURITE_KEY)),
    }


def _found(capture, needles: list[bytes]) -> list[str]:
    flows = {describe(flow) for needle in needles for flow in capture.find(needle)}
    if not flows and any(capture.in_frames(n) for n in needles):
        flows.add("a frame outside any TCP stream")
    return sorted(flows)


def _assert_tls_only(capture, service: str) -> None:
    """Every connection to and from ``service`` starts with a TLS handshake record and is TLS records from its
    first byte to its last, and what TLS leaves in clear (record headers, handshake) carries no HTTP."""
    port = PORTS[service]
    streams = {f: d for f, d in capture.streams.items() if port in (f.sport, f.dport)}
    assert streams, f"no traffic to {service} was captured"
    for flow, data in streams.items():
        assert data[:1] == b"\x16", f"{describe(flow)} does not start with a TLS handshake record"
        broken, clear = tls_records(data)
        assert broken is None, f"{describe(flow)} is not TLS records throughout: {broken}"
        for marker in (b"HTTP/1.", b"POST /", b"GET /", b"PUT /", b"/v1/", b"x-ms-"):
            assert marker not in clear, f"{marker!r} in clear text on {describe(flow)}"


def test_nothing_secret_crosses_the_wire_during_a_full_tpch_run(healthy, tmp_path):
    """All 22 queries, every packet between hosts captured: no canary, key, passphrase or secret in any TCP
    stream or frame; broker and storage traffic is TLS from its first byte; nothing left the test network."""
    pcap = tmp_path / "tpch.pcap"
    queries = range(1, 23)
    with healthy.net.capture(pcap) as counts:
        job = healthy.tpch(f"abfs://{CONTAINER}/results/capture", queries, name="capture", conf=EXPOSED)
        job.wait(1500)
    _answers_match(job, queries)
    assert counts["captured"] > 0 and counts["dropped"] == 0, counts
    capture = read_capture(pcap)
    assert {a for pair in capture.ip_pairs for a in pair} <= {address(h) for h in HOSTS}
    assert not capture.other, capture.other  # IPv4 and ARP only
    client, storage, broker = address("client"), address("storage"), address("broker")
    for worker in map(address, WORKERS):  # the job really ran across the hosts
        assert capture.bytes_between(storage, worker) > 100_000
        assert capture.bytes_between(worker, client) > 10_000 and capture.bytes_between(client, worker) > 10_000
        assert capture.bytes_between(broker, worker) > 0
    assert capture.bytes_between(address("worker1"), address("worker2")) + capture.bytes_between(
        address("worker2"), address("worker1")) > 0, "no shuffle between the executors"
    found = {name: _found(capture, needles) for name, needles in _secrets(healthy).items()}
    assert {name: flows for name, flows in found.items() if flows} == {}
    _assert_tls_only(capture, "broker")
    _assert_tls_only(capture, "storage")
    summary = {"frames": capture.frames, "streams": len(capture.streams), "bytes": sum(map(len, capture.streams.values())),
               "seconds": round(job.seconds)}
    print(f"\ncapture of the full TPC-H run: {summary}")


def test_the_capture_finds_the_canary_when_sparks_encryption_is_off(healthy, tmp_path):
    """The capture bites. With spark.network.crypto.enabled=false the canary crosses in clear from executors
    to the driver (task results), while shuffle blocks stay ciphertext: spark.io.encryption encrypts shuffle
    files and they cross the network as stored. With I/O encryption off too, the shuffle traffic between the
    executors carries it."""
    spark_ports = {PORTS[s] for s in ("driver", "driver blocks", "executor blocks")}
    found = {}
    for leg, conf in (("rpc-off", {"spark.network.crypto.enabled": "false"}),
                      ("rpc-and-io-off", {"spark.network.crypto.enabled": "false", "spark.io.encryption.enabled": "false"})):
        pcap = tmp_path / f"{leg}.pcap"
        with healthy.net.capture(pcap):
            job = healthy.tpch(f"abfs://{CONTAINER}/results/{leg}", [10], name=leg, conf={**EXPOSED, **conf})
            job.wait(600)
        _answers_match(job, [10])
        capture = read_capture(pcap)
        flows = capture.find(CANARY.encode())
        assert flows and all({f.sport, f.dport} & spark_ports for f in flows), flows  # Spark's traffic only
        found[leg] = {"driver": any(PORTS["driver"] in (f.sport, f.dport) for f in flows),
                      "shuffle": any(f.src != f.dst and {f.src, f.dst} <= {address(w) for w in WORKERS} for f in flows)}
        print(f"\ncanary in clear with {leg}: {_found(capture, [CANARY.encode()])}")
        # The keys stay protected even then: they travel only sealed (broker) and wrapped (file headers).
        for name in ("data key", "primary key", "key store passphrase"):
            assert not _found(capture, _secrets(healthy)[name]), name
    assert found == {"rpc-off": {"driver": True, "shuffle": False}, "rpc-and-io-off": {"driver": True, "shuffle": True}}


# -- load ----------------------------------------------------------------------------------------------------


def test_many_executor_processes_ask_the_broker_at_once(healthy):
    """Ten processes on each worker host release the data key at the same instant, as fresh executors do."""
    per_host = 10
    at = time.time() + 8  # time for every process to start and import before the common instant
    processes = [healthy.net.popen(worker, [sys.executable, PROBE, "release", str(healthy.data_key_file),
                                            "--at", str(at)], env=healthy.env(worker),
                                   log=healthy.log(worker, f"release-{index}"))
                 for worker in WORKERS for index in range(per_host)]
    for process in processes:
        assert process.wait(120) == 0
    results = []
    for worker in WORKERS:
        for index in range(per_host):
            lines = healthy.log(worker, f"release-{index}").read_text().strip().splitlines()
            results.append(json.loads(lines[-1]))
    assert all(r["key_ids"] == [healthy.data_key.key_id] for r in results)
    releases = [e for e in _releases_since(healthy, at) if e["caller"]["address"] in map(address, WORKERS)]
    assert len(releases) == 2 * per_host and all(e["decision"] == "allow" for e in releases)
    assert {e["caller"]["address"] for e in releases} == {address(w) for w in WORKERS}
    latencies = sorted(s for r in results for s in r["seconds"])
    print(f"\n{len(latencies)} releases at once from 2 hosts: median {latencies[len(latencies) // 2]:.2f} s, "
          f"slowest {latencies[-1]:.2f} s")


# -- clocks --------------------------------------------------------------------------------------------------


def test_a_worker_whose_clock_is_six_hours_ahead(healthy):
    """Freshness is the broker's business. On worker2 with a clock 6 h ahead (faketime), ``ppml decrypt`` reads a
    table from storage and gets its key from the broker, the audit log keeps the broker's time, and a nonce
    held past its lifetime on that host is refused whatever the host's clock says (a fresh one works)."""
    started = time.time()
    probe_log = healthy.log("worker2", "stale-nonce")
    probe = healthy.net.popen("worker2", ["faketime", "-f", "+6h", sys.executable, PROBE, "stale-nonce",
                                          str(healthy.data_key_file), "--wait", str(NONCE_LIFETIME + 2)],
                              env=healthy.env("worker2"), log=probe_log)
    out = healthy.root / "worker2" / "tmp" / "nation-skewed.tbl"
    decrypted = healthy.net.run("worker2", ["faketime", "-f", "+6h", str(Path(sys.executable).with_name("ppml")),
                                            "decrypt", f"{INPUT}/nation.tbl.ppml", str(out)],
                                env=healthy.env("worker2"), timeout=120)
    assert decrypted.returncode == 0, decrypted.stderr[-3000:]
    assert out.read_bytes() == (healthy.plain / "nation.tbl").read_bytes()
    assert probe.wait(120) == 0, probe_log.read_text()[-3000:]
    result = json.loads(probe_log.read_text().strip().splitlines()[-1])
    assert result["local_time"] - time.time() > 5 * 3600  # the probe really ran 6 h ahead
    assert (result["status"], result["error"]) == (403, "nonce")
    assert result["key_id"] == healthy.data_key.key_id  # a fresh nonce works at once
    skewed = [e for e in _releases_since(healthy, started) if e["caller"]["address"] == address("worker2")]
    assert [e["decision"] for e in skewed].count("allow") >= 2  # the decrypt's and the probe's fresh one
    assert [e.get("code") for e in skewed if e["decision"] == "deny"] == ["nonce"]  # the probe's stale one
    from datetime import datetime

    assert all(abs(datetime.fromisoformat(e["time"]).timestamp() - started) < 900 for e in skewed)


def test_a_host_whose_clock_is_before_the_certificates_fails_clearly(healthy):
    """Two days behind, the broker's certificate is not yet valid: the key request fails at once, naming the
    broker, the certificate and the clock; nothing is retried and nothing is released."""
    before = len(healthy.audit_entries())
    table = healthy.root / "client" / "encrypted" / "nation.tbl.ppml"
    out = healthy.root / "worker2" / "tmp" / "nation.tbl"
    result = healthy.net.run("worker2", ["faketime", "-f", "-2d", str(Path(sys.executable).with_name("ppml")),
                                         "decrypt", str(table), str(out)], env=healthy.env("worker2"), timeout=120)
    assert result.returncode == 5, result.stderr[-3000:]
    assert healthy.broker_url in result.stderr and "certificate is not yet valid" in result.stderr
    assert "clock" in result.stderr and "retrying" not in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    assert len(healthy.audit_entries()) == before


# -- links ---------------------------------------------------------------------------------------------------


def test_latency_and_loss_on_a_workers_link(healthy, tmp_path):
    """15 ± 5 ms each way and 0.5 % of packets lost on worker1's link: the job is slower, the answers right."""
    with healthy.net.shape("worker1", delay_ms=15, jitter_ms=5, loss=0.005, log=tmp_path / "netem.log") as counts:
        job = healthy.tpch(f"abfs://{CONTAINER}/results/lossy", [3], name="lossy", conf=NO_BROADCAST).wait(900)
    _answers_match(job, [3])
    assert counts["packets"] > 1000 and counts["dropped"] > 0, counts
    print(f"\nshaped link: {counts}, job {job.seconds:.0f} s")


def test_a_worker_cut_off_from_the_network(healthy):
    """worker2's cable is pulled mid-query: its executor is declared lost after the network timeout, its work
    is done again on worker1, and the answers match."""
    conf = {**NO_BROADCAST, **_event_log(healthy), "spark.network.timeout": "12s", "spark.network.timeoutInterval": "2s",
            "spark.executor.heartbeatInterval": "1s", "spark.shuffle.io.maxRetries": "1", "spark.shuffle.io.retryWait": "1s"}
    job = healthy.tpch(f"abfs://{CONTAINER}/results/cut", [3], name="cut", conf=conf)
    try:
        wait_for(lambda: _holds_map_output(healthy, "worker2", job) or job.process.poll() is not None, 600,
                 "a finished task on worker2")
        healthy.net.cut("worker2")
        job.wait(900)
    finally:
        healthy.net.mend("worker2")
        healthy.kill_host("worker2")  # a fresh worker for the next test; the old one may still be half-registered
        healthy.start_worker("worker2")
    _answers_match(job, [3])
    events = _events(healthy, job)
    removed = [e for e in events if e["Event"] == "SparkListenerExecutorRemoved"]
    assert removed, "the cut-off executor was never declared lost"


def test_a_worker_killed_mid_query(healthy):
    """Every process of worker2 is killed mid-query: Spark loses its executor and shuffle output, recomputes
    them on worker1, and the answers match. Adaptive execution is off, so that the query is one job whose DAG
    needs every map output: with it on (each query stage a job of its own), a run once showed the executor
    removed and an extra stage on worker1, but no lost or resubmitted task to assert on."""
    job = healthy.tpch(f"abfs://{CONTAINER}/results/killed", [3], name="killed",
                       conf={**NO_BROADCAST, **_event_log(healthy), "spark.sql.adaptive.enabled": "false"})
    wait_for(lambda: _holds_map_output(healthy, "worker2", job) or job.process.poll() is not None, 600,
             "a finished task on worker2")
    healthy.kill_host("worker2")
    job.wait(900)
    healthy.start_worker("worker2")
    _answers_match(job, [3])
    events = _events(healthy, job)
    assert [e for e in events if e["Event"] == "SparkListenerExecutorRemoved"]
    lost = [e for e in events if e["Event"] == "SparkListenerTaskEnd"
            and e["Task End Reason"]["Reason"] in ("ExecutorLostFailure", "FetchFailed", "Resubmitted")]
    resubmitted = [e for e in events if e["Event"] == "SparkListenerStageSubmitted"
                   and e["Stage Info"]["Stage Attempt ID"] > 0]
    assert lost or resubmitted, "no task was lost or stage recomputed: the kill came too late"


# -- services ------------------------------------------------------------------------------------------------


def test_the_broker_killed_mid_run_and_restarted(healthy):
    """The broker is killed once both executors hold the key: the job finishes on the keys
    they hold; a process started while the broker is down retries with backoff and gets its key when the
    broker is back; the audit log continues after the restart and verifies."""
    started = time.time()
    job = healthy.tpch(f"abfs://{CONTAINER}/results/broker", [3, 10], name="broker")

    def holders() -> set[str]:
        return {e["caller"]["address"] for e in _releases_since(healthy, started) if e["decision"] == "allow"}

    wait_for(lambda: holders() >= {address(w) for w in WORKERS} or job.process.poll() is not None,
             600, "releases to both executors")
    healthy.kill_broker()
    late = healthy.net.popen("worker1", [str(Path(sys.executable).with_name("ppml")), "decrypt",
                                         f"{INPUT}/nation.tbl.ppml", str(healthy.root / "worker1" / "tmp" / "nation")],
                             env=healthy.env("worker1"), log=healthy.log("worker1", "late-decrypt"))
    wait_for(lambda: "retrying in" in healthy.log("worker1", "late-decrypt").read_text(), 60,
             "the late process to retry")
    restarted = time.time()
    healthy.start_broker()
    assert late.wait(120) == 0, healthy.log("worker1", "late-decrypt").read_text()[-3000:]
    assert (healthy.root / "worker1" / "tmp" / "nation").read_bytes() == (healthy.plain / "nation.tbl").read_bytes()
    _answers_match(job.wait(900), [3, 10])
    events = [e["event"] for e in healthy.audit_entries()]
    assert events.count("start") >= 2  # the restart continued the same log
    after = [e for e in _releases_since(healthy, restarted) if e["caller"]["address"] == address("worker1")]
    assert any(e["decision"] == "allow" for e in after)
    verified = healthy.ppml("broker", "broker", "audit", "verify", str(healthy.audit_log), "--key",
                            f"{healthy.audit_key}.pub")
    assert verified.returncode == 0, verified.stderr


def test_storage_stopped_during_a_write(healthy):
    """Azurite stops while a task writes its part: the task fails after the Azure SDK's retries (3, about 2 s
    apart here: ``storage_backoff``), the job fails with an error naming the storage account, and the previous
    output of that query (the capture run's, when it ran first) is exactly as it was."""
    out = f"abfs://{CONTAINER}/results/capture"
    listing = ("import adlfs, json, os; fs = adlfs.AzureBlobFileSystem(connection_string=os.environ["
               "'AZURE_STORAGE_CONNECTION_STRING']); print(json.dumps({p: [i['size'], str(i['etag'])] for p, i in "
               f"fs.find('{CONTAINER}/results/capture/Q06', detail=True, withdirs=False).items()}}))")

    def output() -> dict[str, list]:
        """The blobs under Q06 that readers see (names starting with _ or . are not data)."""
        listed = healthy.python("client", listing)
        assert listed.returncode == 0, listed.stderr[-3000:]
        return {path: facts for path, facts in json.loads(listed.stdout).items() if "/_temporary/" not in path}

    before = output()
    if not any(path.endswith("/_SUCCESS") for path in before):  # the capture test did not run first
        _answers_match(healthy.tpch(out, [6], name="storage-before").wait(600), [6])
        before = output()
    assert any("/part-" in path for path in before) and any(path.endswith("/_SUCCESS") for path in before)
    offset = healthy.storage_log_size()
    staging = re.compile(r"RequestMethod=PUT RequestURL=\S*/results/capture/Q06/_temporary/")
    job = healthy.tpch(out, [6], name="storage-fault", conf={"spark.task.maxFailures": "1"})
    wait_for(lambda: staging.search(healthy.storage_requests(offset)) or job.process.poll() is not None, 600,
             "a task writing its part")
    healthy.stop_storage()
    # Storage comes back once the task has failed, so the job's abort can clean up its staged parts.
    wait_for(lambda: "aborting" in job.stderr or job.process.poll() is not None, 300, "the task to fail")
    healthy.start_storage()
    job.wait(600)
    assert job.returncode != 0
    assert "ppml: error: cannot reach storage account devstoreaccount1" in job.stderr, job.stderr[-3000:]
    assert "Traceback" not in job.stderr, job.stderr[-3000:]
    assert output() == before
    checked = healthy.ppml("client", "verify", f"abfs://{CONTAINER}/results/capture/Q06")
    assert checked.returncode == 0, checked.stderr[-3000:]
