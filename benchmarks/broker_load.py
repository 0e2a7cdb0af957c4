#!/usr/bin/env python3
"""The key broker under load, and the key management calls of a whole TPC-H run, in one run.

Part 1, release load. A real broker (``ppml broker serve``: uvicorn over TLS, the production code path) runs
as a child process on loopback. ``--clients`` concurrent clients (threads, spread over ``--client-procs``
processes so the load generator is not held back by one interpreter lock) each do the full protocol for
every release, as a fresh process without a release cache would: ``POST /v1/nonce``; a new X25519 key pair;
simulated evidence binding SHA-256(nonce || public key) (:class:`ppml.attest.simulated.SimulatedAttester`);
``POST /v1/keys/release`` for one of ``--keys`` wrapped data keys (round robin); ``EphemeralKey.open`` of the
sealed answer, checked against the key's id. Each client keeps one keep-alive TLS connection, as
``BrokerKms`` does. The broker's rate limit (a token bucket per client *address*, and every client here is
127.0.0.1) is raised so that nothing is throttled. Four brokers:

* ``local``: the primary key in a local key store (fast KDF); the broker's key cache on (default 5 min),
* ``pkcs11``: the primary key in a SoftHSM2 token (``C_UnwrapKey`` inside the token); key cache on,
* the same two with ``key_cache: 0`` (a cached key expires at once): every release unwraps through the KMS.

All four run at once (an idle broker costs nothing). Each first serves one client alone for
``--single-seconds`` (unloaded latency). Then the N clients visit them in turn: ``--seconds`` per broker, cut
into ``--rounds`` slices taken in rotating order, each after ``--warmup`` seconds of load, so that the rest
of the machine's load (this machine is shared) spreads over every configuration. Reported: releases/s
(overall and per slice), latency p50/p99/max of the whole protocol as the client sees it, the CPU used by
the broker, by the load generator and by every other process on the machine (from /proc), and the
broker's own counters from the final ``stop`` entry of its audit log (``kms_unwraps``, ``released``).

Part 2, KMS calls in a TPC-H run. TPC-H data at ``--tpch-scale`` is encrypted (``aes_gcm_stream``) under one
data key, and again under one data key per table. A broker holding the key store (simulated policy,
default limits and key cache) serves ``ppml tpch run ENC OUT aes_gcm_stream aes_gcm_stream --data-key DK
--master local[2]`` (all 22 queries), run with ``PPML_BROKER_*`` set, no ``PPML_KEYSTORE*`` variables and
``HOME`` pointing at an empty folder, so every key comes from the broker. After the run the broker is
stopped and its audit log gives the release requests, the distinct caller processes, the distinct data
keys and the broker's KMS unwraps; Spark's event log gives the number of tasks. The TPC-H brokers keep the
default limits and key cache. ``--tpch-no-reuse`` adds the per-table variant with
``spark.python.worker.reuse=false``, where every Python task is a new process (slow: off by default).

Usage (from the repository root)::

    .venv/bin/python benchmarks/broker_load.py                      # defaults: about 4 to 5 minutes on 2 cores
    .venv/bin/python benchmarks/broker_load.py --seconds 5 --skip-tpch
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from _report import cpu_model, note, say

FAST_KDF = {"memory_kib": 7 * 1024, "iterations": 5, "lanes": 1}  # the cheapest setting ppml accepts
PASSPHRASE = "broker benchmark passphrase"
CLAIMS = {"app": "bench"}
TPCH_CLAIMS = {"app": "tpch"}
NO_LIMIT = {"requests_per_second": 1_000_000, "burst": 1_000_000}


# ---------------------------------------------------------------------------------------------------
# machine


def _loadavg() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def _softhsm_version() -> str:
    try:
        return subprocess.run(["softhsm2-util", "--version"], capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        return "not installed"


# ---------------------------------------------------------------------------------------------------
# TLS, key stores, SoftHSM2 (copied in spirit from tests/keyvault_server.py, broker_harness.py, softhsm.py)


def make_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and an ECDSA P-256 server certificate for 127.0.0.1: (ca, cert, key) paths."""
    from ppml.broker.scaffold import write_tls_files

    return write_tls_files(folder, ["localhost", "127.0.0.1"])


def make_keystore(folder: Path, *names: str):
    """A local key store with a fast KDF and primary keys ``names``; its passphrase in ``passphrase`` (0600)."""
    from ppml.keys.local import LocalKms

    folder.mkdir(parents=True, exist_ok=True)
    kms = LocalKms(folder / "keystore.json", PASSPHRASE)
    kms.create_store(kdf=FAST_KDF)
    for name in names:
        kms.create_key(name)
    (folder / "passphrase").write_text(PASSPHRASE)
    os.chmod(folder / "passphrase", 0o600)
    kms_entry = {"backend": "local", "keystore": str(folder / "keystore.json"),
                 "passphrase": f"file:{folder / 'passphrase'}"}
    return kms, kms_entry


def make_softhsm(folder: Path, key_name: str):
    """A SoftHSM2 token with primary key ``key_name``; sets SOFTHSM2_CONF for this process and its children.

    Must run before this process loads the PKCS#11 module (SoftHSM2 reads its configuration in C_Initialize).
    """
    from ppml.keys.pkcs11 import Pkcs11Kms, default_module

    module = default_module()
    if shutil.which("softhsm2-util") is None or module is None:
        raise RuntimeError("SoftHSM2 is not installed (apt-get install softhsm2), or pass --skip-pkcs11")
    tokens = folder / "tokens"
    tokens.mkdir(parents=True)
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    label, pin = "ppml-bench", f"pin-{uuid.uuid4().hex[:8]}"
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "so-pin-1234",
                    "--pin", pin], check=True, capture_output=True)
    pin_file = folder / "pin"
    pin_file.write_text(pin)
    pin_file.chmod(0o600)
    entry = {"backend": "pkcs11", "token": label, "pin": f"file:{pin_file}", "module": module}
    kms = Pkcs11Kms(token=label, pin=f"file:{pin_file}", module=module)
    kms.create_key(key_name)
    return kms, entry


# ---------------------------------------------------------------------------------------------------
# the broker process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """``ppml broker serve`` in a child process, configured in ``folder``; stopped with SIGTERM."""

    def __init__(self, folder: Path, pki: tuple[Path, Path, Path], kms: list[dict[str, Any]],
                 policies: list[dict[str, Any]], *, limits: dict[str, Any] | None = None,
                 key_cache: int | str | None = None) -> None:
        import yaml

        self.folder, self.ca = folder, pki[0]
        folder.mkdir(parents=True, exist_ok=True)
        policy_dir = folder / "policies"
        policy_dir.mkdir()
        for policy in policies:
            (policy_dir / f"{policy['name']}.yaml").write_text(yaml.safe_dump(policy))
        self.port = _free_port()
        self.audit_log = folder / "audit.jsonl"
        config = {"listen": {"host": "127.0.0.1", "port": self.port},
                  "tls": {"certificate": str(pki[1]), "private_key": str(pki[2])},
                  "kms": kms, "verifiers": {"simulated": {}}, "policies": [str(policy_dir)],
                  "audit_log": str(self.audit_log), "limits": limits or {}}
        if key_cache is not None:
            config["key_cache"] = key_cache
        self.config_path = folder / "broker.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.stderr_path = folder / "broker.stderr"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Broker:
        import httpx

        self.process = subprocess.Popen(
            [sys.executable, "-m", "ppml.cli.main", "broker", "serve", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=self.stderr_path.open("wb"))
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

    def cpu_seconds(self) -> float:
        """utime + stime of the broker process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    def stop_counters(self) -> dict[str, int]:
        stops = [e for e in self.audit() if e.get("event") == "stop"]
        return dict(stops[-1]["counters"]) if stops else {}


# ---------------------------------------------------------------------------------------------------
# part 1: the load generator (runs in child processes)


def _load_process(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec["threads"]`` clients of this process, each releasing keys until ``spec["end"]``."""
    import httpx

    from ppml.attest.evidence import binding_digest
    from ppml.attest.simulated import SimulatedAttester
    from ppml.crypto.envelope import WrappedKey
    from ppml.keys.broker_protocol import NONCE_PATH, RELEASE_PATH, EphemeralKey, b64, release_info, unb64

    warnings.simplefilter("ignore")  # the simulated attester warns on every call, by design
    wrapped = [WrappedKey.from_json(w) for w in spec["wrapped"]]
    bodies = [w.to_json() for w in wrapped]
    key_ids = spec["key_ids"]
    attester = SimulatedAttester(CLAIMS)
    context = ssl.create_default_context(cafile=spec["ca"])
    start, end = spec["start"], spec["end"]
    latencies: list[list[float]] = [[] for _ in range(spec["threads"])]
    errors: Counter[str] = Counter()
    warm = [0] * spec["threads"]
    cpu: dict[str, float] = {}

    def client(index: int) -> None:
        name = f"bench p{spec['proc']} t{index}"
        turn = spec["proc"] * 7919 + index  # spread the clients over the keys
        with httpx.Client(base_url=spec["url"], verify=context, timeout=60,
                          headers={"User-Agent": "ppml-broker-bench"}) as http:
            while True:
                began = time.monotonic()
                if began >= end:
                    return
                which = turn % len(wrapped)
                turn += 1
                try:
                    response = http.post(NONCE_PATH)
                    if response.status_code != 200:
                        raise RuntimeError(f"nonce {response.status_code}")
                    nonce = unb64(response.json()["nonce"], what="nonce")
                    ephemeral = EphemeralKey()
                    evidence = attester.attest(binding_digest(nonce, ephemeral.public_bytes))
                    response = http.post(RELEASE_PATH, json={
                        "nonce": b64(nonce), "public_key": b64(ephemeral.public_bytes), "evidence": evidence.to_json(),
                        "keys": [bodies[which]], "caller": name})
                    if response.status_code != 200:
                        raise RuntimeError(f"release {response.status_code}")
                    answer = response.json()["keys"][0]
                    if answer.get("status") != "released":
                        raise RuntimeError(f"denied: {answer.get('code')}")
                    key = ephemeral.open(unb64(answer["sealed"], what="sealed"), release_info(nonce, wrapped[which]),
                                         reference=wrapped[which].reference)
                    if key.key_id != key_ids[which]:
                        raise RuntimeError("wrong key")
                except Exception as exc:  # noqa: BLE001 - counted and reported, never silently
                    errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    continue
                done = time.monotonic()
                if began >= start and done <= end:
                    latencies[index].append(done - began)
                elif done < start:
                    warm[index] += 1

    def sample_cpu() -> None:
        time.sleep(max(0.0, start - time.monotonic()))
        cpu["start"] = time.process_time()
        time.sleep(max(0.0, end - time.monotonic()))
        cpu["end"] = time.process_time()

    sampler = threading.Thread(target=sample_cpu)
    sampler.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(spec["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sampler.join()
    return {"latencies": [x for per in latencies for x in per], "errors": dict(errors),
            "cold_clients": sum(1 for w in warm if w == 0), "cpu": cpu.get("end", 0.0) - cpu.get("start", 0.0)}


def _proc_stat() -> tuple[int, int, int]:
    """(busy, idle, steal) clock ticks of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, idle + iowait, steal


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_slice(broker: Broker, pool: concurrent.futures.ProcessPoolExecutor, wrapped, key_ids, *, clients: int,
              procs: int, seconds: float, warmup: float) -> dict[str, Any]:
    """``clients`` clients over ``procs`` processes against ``broker`` for ``seconds`` after ``warmup``: raw numbers."""
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    start = time.monotonic() + warmup
    end = start + seconds
    specs = [{"proc": i, "threads": n, "url": broker.url, "ca": str(broker.ca), "start": start, "end": end,
              "wrapped": [w.to_json() for w in wrapped], "key_ids": key_ids} for i, n in enumerate(shares)]
    futures = [pool.submit(_load_process, spec) for spec in specs]
    time.sleep(max(0.0, start - time.monotonic()))
    cpu_start, stat_start = broker.cpu_seconds(), _proc_stat()
    time.sleep(max(0.0, end - time.monotonic()))
    cpu_end, stat_end = broker.cpu_seconds(), _proc_stat()
    busy, idle, steal = (b - a for a, b in zip(stat_start, stat_end))
    results = [f.result() for f in futures]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    ticks = max(1, busy + idle + steal)
    return {"seconds": seconds, "latencies": [x for r in results for x in r["latencies"]],
            "broker_cpu": cpu_end - cpu_start, "client_cpu": sum(r["cpu"] for r in results),
            "machine_busy": busy / ticks * (os.cpu_count() or 1) * seconds,  # core-seconds
            "machine_steal": steal / ticks * (os.cpu_count() or 1) * seconds,
            "errors": dict(errors), "cold_clients": sum(r["cold_clients"] for r in results)}


def summarize(slices: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """One row from the slices of one configuration: pooled latencies, total releases over total seconds."""
    seconds = sum(s["seconds"] for s in slices)
    latencies = [x for s in slices for x in s["latencies"]]
    errors: Counter[str] = Counter()
    for s in slices:
        errors.update(s["errors"])
    rates = [len(s["latencies"]) / s["seconds"] for s in slices]
    busy = sum(s["machine_busy"] for s in slices) / seconds
    broker_cpu = sum(s["broker_cpu"] for s in slices) / seconds
    client_cpu = sum(s["client_cpu"] for s in slices) / seconds
    return {
        "clients": clients, "seconds": seconds, "slices": len(slices), "releases": len(latencies),
        "rate": len(latencies) / seconds, "slice_rates": [round(r, 1) for r in rates],
        "p50_ms": _percentile(latencies, 0.50) * 1e3, "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3 if latencies else float("nan"),
        "mean_ms": statistics.fmean(latencies) * 1e3 if latencies else float("nan"),
        "broker_cpu": broker_cpu, "client_cpu": client_cpu, "machine_busy": busy,
        "other_cpu": max(0.0, busy - broker_cpu - client_cpu),
        "machine_steal": sum(s["machine_steal"] for s in slices) / seconds,
        "errors": dict(errors), "cold_clients": sum(s["cold_clients"] for s in slices),
    }


def broker_counter(broker: Broker, name: str) -> int:
    import httpx

    with httpx.Client(base_url=broker.url, verify=ssl.create_default_context(cafile=str(broker.ca)),
                      timeout=10) as client:
        return int(client.get("/v1/health").json().get("counters", {}).get(name, 0))


def part_release_load(args, work: Path) -> list[dict[str, Any]]:
    """All four brokers run at once (idle ones cost nothing); the load visits them in turn, in rotating order,
    ``--rounds`` slices each, so that changes in the machine's other load spread over every configuration."""
    from ppml.crypto.datakey import DataKey

    pki = make_pki(work / "tls")
    local_kms, local_entry = make_keystore(work / "keys", "bench")
    backends: list[tuple[str, Any, dict[str, Any]]] = [("local", local_kms, local_entry)]
    if not args.skip_pkcs11:
        hsm_kms, hsm_entry = make_softhsm(work / "softhsm", "bench")
        backends.append(("pkcs11", hsm_kms, hsm_entry))
    policy = {"name": "bench", "keys": ["local:bench*", "pkcs11:*/bench"], "release_lifetime": "10m",
              "allow": [{"type": "simulated", "claims": CLAIMS}]}
    configs: list[dict[str, Any]] = []
    for backend, kms, entry in backends:
        keys = [DataKey.generate() for _ in range(args.keys)]
        wrapped = [kms.wrap(k, "bench") for k in keys]
        for cache_label, key_cache in (("on (5 min)", None), ("off (`key_cache: 0`)", 0)):
            folder = work / f"broker-{backend}-{'nocache' if key_cache == 0 else 'cache'}"
            configs.append({"backend": backend, "cache": cache_label, "label": f"{backend}, key cache {cache_label}",
                            "wrapped": wrapped, "key_ids": [k.key_id for k in keys],
                            "broker": Broker(folder, pki, [entry], [policy], limits=NO_LIMIT, key_cache=key_cache),
                            "single": [], "loaded": []})
    context = multiprocessing.get_context("spawn")
    rows: list[dict[str, Any]] = []
    try:
        for config in configs:
            config["broker"].start()
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.client_procs, mp_context=context) as pool:
            list(pool.map(_noop, range(args.client_procs)))  # the pool's processes start (imports) untimed
            if args.single_seconds > 0:
                for config in configs:
                    note(f"release load: 1 client, {config['label']}")
                    config["single"].append(run_slice(config["broker"], pool, config["wrapped"], config["key_ids"],
                                                      clients=1, procs=1, seconds=args.single_seconds, warmup=1.0))
            rounds = max(1, args.rounds)
            for turn in range(rounds):
                order = configs[turn % len(configs):] + configs[:turn % len(configs)]
                for config in order:
                    note(f"release load: {args.clients} clients, {config['label']} (round {turn + 1}/{rounds})")
                    piece = run_slice(config["broker"], pool, config["wrapped"], config["key_ids"],
                                      clients=args.clients, procs=args.client_procs, seconds=args.seconds / rounds,
                                      warmup=args.warmup)
                    config["loaded"].append(piece)
                    note(f"  {len(piece['latencies']) / piece['seconds']:,.0f} releases/s")
        for config in configs:
            config["released_live"] = broker_counter(config["broker"], "released")
    finally:
        for config in configs:
            config["exit_code"] = config["broker"].stop()
    for config in configs:
        broker = config["broker"]
        counters = broker.stop_counters()
        allowed = sum(1 for e in broker.audit() if e.get("decision") == "allow")
        for clients, slices in ((1, config["single"]), (args.clients, config["loaded"])):
            if not slices:
                continue
            row = summarize(slices, clients)
            row.update(backend=config["backend"], cache=config["cache"], label=config["label"],
                       exit_code=config["exit_code"], kms_unwraps=counters.get("kms_unwraps", 0),
                       released=counters.get("released", 0), denied=counters.get("denied", 0), audit_allow=allowed,
                       released_live=config["released_live"])
            rows.append(row)
            note(f"{row['label']}, {clients} clients: {row['rate']:,.0f} releases/s {row['slice_rates']}, "
                 f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms; broker CPU {row['broker_cpu']:.0%}, "
                 f"clients CPU {row['client_cpu']:.0%}, other {row['other_cpu']:.0%}; "
                 f"errors {sum(row['errors'].values())}")
    return rows


def _noop(_: int) -> None:
    import httpx  # noqa: F401

    import ppml.attest.simulated  # noqa: F401
    import ppml.keys.broker_protocol  # noqa: F401


# ---------------------------------------------------------------------------------------------------
# part 2: TPC-H through the broker


def _count_files(folder: Path, suffix: str) -> int:
    return sum(1 for p in folder.rglob(f"*{suffix}") if p.is_file() and not p.name.startswith((".", "_")))


def _spark_tasks(event_dir: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for log in (p for p in event_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        with log.open("rb") as handle:
            for raw in handle:
                if b'"Event":"SparkListenerTaskEnd"' in raw:
                    counts["tasks"] += 1
                elif b'"Event":"SparkListenerStageCompleted"' in raw:
                    counts["stages"] += 1
                elif b'"Event":"SparkListenerJobEnd"' in raw:
                    counts["jobs"] += 1
    return dict(counts)


def part_tpch(args, work: Path) -> list[dict[str, Any]]:
    from ppml.io.files import encrypt
    from ppml.keys.datakey_file import DataKeyFile
    from ppml.tpch.gen import generate
    from ppml.crypto.formats import DEFAULT_FORMAT
    from ppml.io.encryption import Encryption
    from ppml.tpch.runner import encrypt_tables
    from ppml.tpch.schema import TABLE_NAMES

    plain = work / "tpch-plain"
    started = time.perf_counter()
    generate(args.tpch_scale, plain)
    note(f"TPC-H scale {args.tpch_scale:g} generated in {time.perf_counter() - started:.1f} s")
    pki = make_pki(work / "tpch-tls")
    kms, entry = make_keystore(work / "tpch-keys", "tpch")

    def data_key_file(name: str):
        key, wrapped = kms.generate_data_key("tpch")
        path = work / f"{name}.json"
        DataKeyFile.new(key.key_id, [wrapped]).save(path)
        return key, wrapped, path

    variants: list[tuple[str, Path, Path, int, list[str]]] = []
    key, wrapped, dk_one = data_key_file("dk-one")
    enc_one = work / "enc-one-key"
    encrypt_tables(str(plain), str(enc_one), Encryption(DEFAULT_FORMAT, key, (wrapped,)))
    variants.append(("one data key (tables and results)", enc_one, dk_one, 1, []))
    enc_per = work / "enc-key-per-table"
    enc_per.mkdir()
    for table in TABLE_NAMES:
        key_t, wrapped_t, _ = data_key_file(f"dk-{table}")
        encrypt(str(plain / f"{table}.tbl"), str(enc_per / f"{table}.tbl.ppml"), key=key_t, envelope=[wrapped_t])
    _, _, dk_out = data_key_file("dk-results")
    variants.append(("one data key per table, one for results", enc_per, dk_out, len(TABLE_NAMES) + 1, []))
    if args.tpch_no_reuse:
        variants.append(("one per table + results, `spark.python.worker.reuse=false`", enc_per, dk_out,
                         len(TABLE_NAMES) + 1, ["spark.python.worker.reuse=false"]))

    rows = []
    policy = {"name": "tpch", "keys": ["local:tpch*"], "release_lifetime": "10m",
              "allow": [{"type": "simulated", "claims": TPCH_CLAIMS}]}
    for index, (label, enc, dk, n_keys, confs) in enumerate(variants):
        note(f"TPC-H through the broker: {label}")
        home = work / f"home-{index}"
        home.mkdir()
        events = work / f"spark-events-{index}"
        events.mkdir()
        out = work / f"tpch-out-{index}"
        broker = Broker(work / f"tpch-broker-{index}", pki, [entry], [policy]).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PPML_")}
        env.update(HOME=str(home), PPML_BROKER_URL=broker.url, PPML_BROKER_CA=str(broker.ca),
                   PPML_BROKER_ATTESTER="simulated", PPML_BROKER_ATTESTER_SETTINGS=json.dumps({"claims": TPCH_CLAIMS}),
                   PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
        command = [sys.executable, "-m", "ppml.cli.main", "tpch", "run", str(enc), str(out), "aes_gcm_stream",
                   "aes_gcm_stream", "--data-key", str(dk), "--master", "local[2]", "--scale", f"{args.tpch_scale:g}",
                   "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir=file://{events}",
                   "--conf", "spark.eventLog.compress=false", "--conf", "spark.eventLog.rolling.enabled=false",
                   "--json"]
        for conf in confs:
            command += ["--conf", conf]
        started = time.perf_counter()
        try:
            run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   cwd=work)
            stdout, stderr = run.communicate()
        finally:
            wall = time.perf_counter() - started
            code = broker.stop()
        (work / f"tpch-run-{index}.stderr").write_text(stderr)
        if run.returncode != 0:
            raise RuntimeError(f"ppml tpch run failed ({run.returncode}):\n{stderr[-4000:]}")
        payload = json.loads(stdout[stdout.index("{"):])
        driver = f"{socket.gethostname()} pid {run.pid}"  # BrokerKms's default caller name
        audit = broker.audit()
        allows = [e for e in audit if e.get("decision") == "allow"]
        denies = [e for e in audit if e.get("decision") == "deny"]
        counters = broker.stop_counters()
        tasks = _spark_tasks(events)
        rows.append({
            "label": label, "data_keys": n_keys, "input_files": _count_files(enc, ".ppml"),
            "output_files": _count_files(out, ".ppml"),
            "queries": len(payload.get("queries", [])), "query_seconds": payload.get("total_seconds"), "wall": wall,
            "tasks": tasks.get("tasks", 0), "stages": tasks.get("stages", 0), "jobs": tasks.get("jobs", 0),
            "release_requests": len(allows), "denied": len(denies),
            "callers": len({e["caller"].get("declared_name") for e in allows}),
            "driver_releases": sum(1 for e in allows if e["caller"].get("declared_name") == driver),
            "distinct_keys": len({e.get("key_id") for e in allows}),
            "kms_unwraps": counters.get("kms_unwraps", 0), "nonces": counters.get("nonces", 0),
            "broker_exit": code,
            "per_caller": sorted(Counter(e["caller"].get("declared_name") for e in allows).values(), reverse=True),
        })
        note(f"  {rows[-1]['release_requests']} releases from {rows[-1]['callers']} processes, "
             f"{rows[-1]['distinct_keys']} keys, {rows[-1]['kms_unwraps']} KMS unwraps, {rows[-1]['tasks']} tasks, "
             f"{wall:.0f} s")
    return rows


# ---------------------------------------------------------------------------------------------------
# report


def print_report(args, machine: dict[str, str], load_rows, tpch_rows) -> None:
    say("## Key broker (`benchmarks/broker_load.py`)")
    say()
    say(f"- nproc {machine['nproc']}; CPU `{machine['cpu']}`; Python {machine['python']}; cryptography "
        f"{machine['cryptography']}; uvicorn {machine['uvicorn']}; httpx {machine['httpx']}; {machine['softhsm']}")
    say(f"- {machine['started']} → {machine['finished']}; load average {machine['load_start']} at the start, "
        f"{machine['load_end']} at the end")
    say(f"- command: `{machine['command']}`")
    if load_rows:
        say()
        say(f"### Release load: {args.clients} clients in {args.client_procs} processes, {args.keys} data keys; "
            f"{args.seconds:g} s per broker in {args.rounds} slices, rotating over the brokers, each after "
            f"{args.warmup:g} s warm-up; 1 client alone for {args.single_seconds:g} s")
        say()
        say("| backend | broker key cache | clients | releases/s | per slice | p50 ms | p99 ms | max ms "
            "| broker CPU (cores) | clients CPU | other processes CPU | broker CPU ms / release "
            "| KMS unwraps / releases (whole broker run) | errors |")
        say("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in load_rows:
            per = r["broker_cpu"] / r["rate"] * 1e3 if r["rate"] else float("nan")
            slices = ", ".join(f"{x:,.0f}" for x in r["slice_rates"]) if len(r["slice_rates"]) > 1 else ""
            say(f"| {r['backend']} | {r['cache']} | {r['clients']} | {r['rate']:,.0f} | {slices} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['broker_cpu']:.2f} | {r['client_cpu']:.2f} | "
                f"{r['other_cpu']:.2f} | {per:.2f} | {r['kms_unwraps']:,} / {r['released']:,} | "
                f"{sum(r['errors'].values())} |")
        loaded = {(r["backend"], r["cache"]): r for r in load_rows if r["clients"] == args.clients}
        say()
        base = loaded.get(("local", "on (5 min)"))
        for (backend, cache), r in loaded.items():
            if base and r is not base:
                say(f"* {backend}, key cache {cache}: {r['rate'] / base['rate']:.2f}× the releases/s of local with "
                    f"the cache, p50 {r['p50_ms'] / base['p50_ms']:.2f}×")
        off = "off (`key_cache: 0`)"
        local_off, hsm_off = loaded.get(("local", off)), loaded.get(("pkcs11", off))
        if local_off and hsm_off and local_off["rate"] and hsm_off["rate"]:
            extra = (hsm_off["broker_cpu"] / hsm_off["rate"] - local_off["broker_cpu"] / local_off["rate"]) * 1e3
            say(f"* one SoftHSM2 unwrap adds about {extra:.2f} ms of broker CPU per release (pkcs11 minus local, "
                f"both without the key cache, {args.clients} clients); the token's calls are serialized by one lock")
        for r in load_rows:
            if r["errors"]:
                say(f"* errors ({r['label']}, {r['clients']} clients): {r['errors']}")
            if r["cold_clients"]:
                say(f"* {r['cold_clients']} clients of {r['label']} had not finished a release before the window")
            if r["exit_code"] != 0:
                say(f"* broker ({r['label']}) exited with {r['exit_code']}")
    if tpch_rows:
        say()
        say(f"### KMS calls in a TPC-H run: scale {args.tpch_scale:g}, `ppml tpch run ... aes_gcm_stream "
            "aes_gcm_stream --master local[2]`, 22 queries, every key from the broker")
        say()
        say("| data keys | distinct keys released | encrypted input files | result files written | Spark tasks "
            "| caller processes | release requests | releases per process | broker KMS unwraps | queries s | wall s |")
        say("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for r in tpch_rows:
            say(f"| {r['label']} | {r['distinct_keys']} | {r['input_files']} | {r['output_files']} | {r['tasks']:,} | "
                f"{r['callers']} | {r['release_requests']} | {_grouped(r['per_caller'])} | "
                f"{r['kms_unwraps']} | {r['query_seconds']:.1f} | {r['wall']:.1f} |")
        say()
        for r in tpch_rows:
            say(f"* {r['label']}: {r['queries']} queries, {r['jobs']} Spark jobs, {r['stages']} stages; "
                f"releases to the driver process {r['driver_releases']} (the others went to Python workers); "
                f"denied requests {r['denied']}; broker nonces {r['nonces']}; broker exit {r['broker_exit']}")


def _grouped(values: list[int]) -> str:
    """``[9, 9, 1]`` → ``9 ×2, 1 ×1``."""
    return ", ".join(f"{value} ×{count}" for value, count in sorted(Counter(values).items(), reverse=True))


def check(load_rows, tpch_rows) -> list[str]:
    failures = []
    for r in load_rows:
        if r["errors"]:
            failures.append(f"{r['label']}: {sum(r['errors'].values())} failed releases")
        if r["exit_code"] != 0:
            failures.append(f"{r['label']}: broker exit {r['exit_code']}")
        if r["audit_allow"] != r["released"] or r["released_live"] != r["released"]:
            failures.append(f"{r['label']}: audit allow entries {r['audit_allow']} != broker 'released' "
                            f"{r['released']} (live {r['released_live']})")
    for r in tpch_rows:
        if r["kms_unwraps"] != r["distinct_keys"] or r["distinct_keys"] != r["data_keys"]:
            failures.append(f"TPC-H {r['label']}: {r['kms_unwraps']} KMS unwraps for {r['distinct_keys']} distinct "
                            f"released keys ({r['data_keys']} data keys)")
        if r["broker_exit"] != 0 or r["denied"]:
            failures.append(f"TPC-H {r['label']}: broker exit {r['broker_exit']}, {r['denied']} denied")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per loaded broker (15)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--client-procs", type=int, default=2, help="processes the clients are spread over (2)")
    parser.add_argument("--keys", type=int, default=8, help="distinct data keys the clients ask for (8)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="the loaded --seconds of each broker are split into this many slices, taken in "
                             "rotating order across the brokers (3)")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds of load before each slice (1.5)")
    parser.add_argument("--single-seconds", type=float, default=3.0,
                        help="seconds of one client alone per broker, for unloaded latency (3; 0 skips)")
    parser.add_argument("--skip-pkcs11", action="store_true", help="no SoftHSM2 legs")
    parser.add_argument("--skip-load", action="store_true", help="no release-load part")
    parser.add_argument("--tpch-scale", type=float, default=0.1, help="TPC-H scale factor (0.1)")
    parser.add_argument("--skip-tpch", action="store_true", help="no TPC-H part")
    parser.add_argument("--tpch-no-reuse", action="store_true",
                        help="also run the per-table-key variant with spark.python.worker.reuse=false, so that every "
                             "Python task is a new process (adds about 4 minutes on 2 cores)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temp folder, "
                                                                    "deleted afterwards)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = parser.parse_args(argv)

    warnings.simplefilter("ignore")  # simulated attestation warns by design
    machine = {"nproc": str(os.cpu_count()), "cpu": cpu_model(), "python": platform.python_version(),
               "cryptography": _version("cryptography"), "uvicorn": _version("uvicorn"), "httpx": _version("httpx"),
               "softhsm": _softhsm_version() if not args.skip_pkcs11 else "SoftHSM2 skipped",
               "load_start": _loadavg(),
               "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": " ".join([".venv/bin/python", "benchmarks/broker_load.py", *(argv or sys.argv[1:])])}
    if machine["softhsm"] and not machine["softhsm"].startswith("SoftHSM"):
        machine["softhsm"] = f"SoftHSM2 {machine['softhsm']}"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ppml-broker-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    begun = time.perf_counter()
    try:
        load_rows = [] if args.skip_load else part_release_load(args, work)
        tpch_rows = [] if args.skip_tpch else part_tpch(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    machine.update(load_end=_loadavg(), finished=_dt.datetime.now(_dt.timezone.utc).strftime("%H:%M UTC"))
    note(f"total {time.perf_counter() - begun:.0f} s")
    print_report(args, machine, load_rows, tpch_rows)
    failures = check(load_rows, tpch_rows)
    say()
    for failure in failures:
        say(f"* FAIL: {failure}")
    if not failures:
        say("* PASS: every release opened to the expected key; audit allow entries = broker 'released'"
            + ("; TPC-H: broker KMS unwraps = distinct data keys" if tpch_rows else ""))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "load": load_rows, "tpch": tpch_rows}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
