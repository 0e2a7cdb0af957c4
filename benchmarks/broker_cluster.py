#!/usr/bin/env python3
"""Key releases across hosts: many executor processes on two worker hosts ask one key broker at once.

The network of tests/netcluster.py (network namespaces joined by a bridge; needs root) with only the key
broker started: ``ppml broker serve`` on its own host (TLS, a local key store, simulated attestation, the
default limits: 20 requests/s and a burst of 40 per client address, key cache on). For each ``--procs`` N,
N processes start on each of the two worker hosts (``tests/broker_probe.py release``), import everything,
wait for a common instant, then each makes ``--times`` releases one after another, forgetting the key in
between as that many fresh executor processes would. A release is the product's client path end to end
(``BrokerKms.unwrap``: nonce, ephemeral X25519 key, simulated evidence, release, HPKE open, and its retries:
429 with Retry-After, backoff while unreachable).

Reported per N: releases, seconds from the common instant to the last release, releases per second,
latency (p50, p99, max) as the processes see it, requests the broker refused with 429 (its audit log), and
the broker's CPU seconds (from /proc).

Usage (from the repository root, as root)::

    .venv/bin/python benchmarks/broker_cluster.py                       # N = 1, 4, 8, 16, 32; about 3 minutes
    .venv/bin/python benchmarks/broker_cluster.py --procs 8 --times 5
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _report import cpu_model, note, say

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from netcluster import WORKERS, Cluster, address, namespace_support

PROBE = Path(__file__).resolve().parents[1] / "tests" / "broker_probe.py"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def burst(cluster: Cluster, procs: int, times: int, round_: int) -> dict[str, object]:
    """``procs`` processes per worker host, ``times`` releases each, all starting at one instant."""
    at = time.time() + 5 + procs * 0.4  # every process started and imported before the instant
    logs, processes = [], []
    for worker in WORKERS:
        for index in range(procs):
            log = cluster.log(worker, f"bench-{round_}-{index}")
            logs.append(log)
            processes.append(cluster.net.popen(worker, [sys.executable, str(PROBE), "release",
                                                        str(cluster.data_key_file), "--at", str(at), "--times",
                                                        str(times)], env=cluster.env(worker), log=log))
    broker_pid = cluster.processes["broker"].pid
    cpu_before = _cpu_seconds(broker_pid)
    audited = len(cluster.audit_entries())
    failed = sum(process.wait(600) != 0 for process in processes)
    finished = max(log.stat().st_mtime for log in logs)
    cpu = _cpu_seconds(broker_pid) - cpu_before
    latencies = []
    for log in logs:
        lines = log.read_text().strip().splitlines()
        if lines and lines[-1].startswith("{"):
            latencies += json.loads(lines[-1])["seconds"]
    entries = cluster.audit_entries()[audited:]
    seconds = finished - at
    return {"processes": 2 * procs, "releases": len(latencies), "failed": failed, "seconds": seconds,
            "rate": len(latencies) / seconds, "p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99),
            "max": max(latencies), "rate_limited": sum(e.get("code") == "rate" for e in entries),
            "allowed": sum(e.get("decision") == "allow" for e in entries), "broker_cpu": cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,4,8,16,32", help="processes per worker host, one burst each")
    parser.add_argument("--times", type=int, default=3, help="releases per process, one after another (3)")
    args = parser.parse_args(argv)
    problem = namespace_support()
    if problem:
        raise SystemExit(f"broker_cluster: {problem}")
    machine = {"cpu": cpu_model(), "nproc": os.cpu_count(), "python": platform.python_version(),
               "load": " / ".join(Path("/proc/loadavg").read_text().split()[:3]),
               "started": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    work = Path(tempfile.mkdtemp(prefix="ppml-broker-cluster-"))
    cluster = Cluster(work, f"t{os.getpid()}")
    rows = []
    try:
        cluster.start(services=("broker",))
        for round_, procs in enumerate(int(p) for p in args.procs.split(",")):
            note(f"{2 * procs} processes on {', '.join(address(w) for w in WORKERS)}, {args.times} releases each")
            rows.append(burst(cluster, procs, args.times, round_))
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    machine["load_end"] = " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    say(f"Machine: {machine['nproc']} cores ({machine['cpu']}), Python {machine['python']}; "
        f"{machine['started']}; load average {machine['load']} at the start, {machine['load_end']} at the end.")
    say(f"Command: .venv/bin/python benchmarks/broker_cluster.py {' '.join(argv or sys.argv[1:])}".rstrip())
    say()
    say("| processes (2 hosts) | releases | failed | seconds | releases/s | p50 ms | p99 ms | max ms | 429s | "
        "broker CPU s |")
    say("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        say(f"| {r['processes']} | {r['releases']} | {r['failed']} | {r['seconds']:.1f} | {r['rate']:.1f} | "
            f"{r['p50'] * 1e3:,.0f} | {r['p99'] * 1e3:,.0f} | {r['max'] * 1e3:,.0f} | {r['rate_limited']} | "
            f"{r['broker_cpu']:.2f} |")
    return 1 if any(r["failed"] or r["allowed"] != r["releases"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
