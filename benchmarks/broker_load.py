#!/usr/bin/env python3
"""The key broker under load (MAA tokens and SGX quotes, one and two replicas), where a release's time goes,
and the key management calls of a whole TPC-H run, in one run.

Part 1, release load. Real brokers (``ppml broker serve``: uvicorn over TLS, the production code path) run as
child processes on loopback, all at once (an idle broker costs nothing):

* ``1 replica``: the default deployment, one process, nothing else;
* ``1 replica, 2 workers``: one replica with a worker process per core, sharing one ledger;
* ``2 replicas``: two brokers of one worker each, sharing the nonce secret and Redis (started here), the
  clients taking the nonce from one and releasing at the other (a Service without session affinity);
* with ``--baseline SRC``: the broker of an older ppml (``SRC`` is its ``src`` folder) on the same load, for
  MAA tokens and for Intel's sample SGX quote (it cannot trust the test platform: each quote is verified in
  full and then refused as not bound, which is what it is timed on).

Each release is the full protocol with fresh evidence (benchmarks/_release_client.py): ``--clients`` clients
in ``--client-procs`` processes, asyncio, one keep-alive TLS connection per replica each. Every broker serves
one client alone for ``--single-seconds`` (latency without queueing), then the clients for ``--seconds`` in
``--rounds`` slices taken in rotating order across the brokers, each after ``--warmup`` seconds, so that the
rest of the machine's load spreads over every configuration. Reported: releases/s, latency p50/p99/max, CPU
of the brokers (every process of a replica, Redis included), of the load generator and of everything else
(from /proc), and the brokers' counters. Rate limits are raised (every client is 127.0.0.1).

Part 2 (``_broker_tpch.py``): KMS calls and releases of ``ppml tpch run`` with every key from the broker.

Usage (from the repository root)::

    .venv/bin/python benchmarks/broker_load.py --skip-tpch
    .venv/bin/python benchmarks/broker_load.py --baseline /tmp/ppml-before/src --seconds 30 --skip-tpch
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
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from _broker_setup import Broker, Redis, cpu_seconds, machine_ticks, make_keystore, make_pki
from _release_client import run_clients
from _report import cpu_model, note, say

TESTS = str(Path(__file__).resolve().parents[1] / "tests")
TESTDATA = Path(os.environ.get("PPML_ATTESTATION_TESTDATA", "/work/shared/testdata/attestation"))
NO_LIMIT = {"requests_per_second": 1_000_000, "burst": 1_000_000, "max_connections_per_address": 1024}
MAA_ISSUER = "https://ppmlbench.weu.attest.azure.net"
SAMPLE_TIME = "2025-07-15T00:00:00Z"  # inside the SGX sample collateral's validity


def _loadavg() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def wait_for_idle(limit: float, *, window: float = 5.0, share: float = 0.9) -> str:
    """Wait up to ``limit`` seconds for ``window`` seconds in which the machine was at least ``share`` idle;
    say what was found (the report prints it)."""
    deadline = time.monotonic() + limit
    best = 0.0
    while True:
        busy0, idle0, steal0 = machine_ticks()
        time.sleep(window)
        busy1, idle1, steal1 = machine_ticks()
        total = (busy1 - busy0) + (idle1 - idle0) + (steal1 - steal0)
        idle = (idle1 - idle0) / total if total else 0.0
        best = max(best, idle)
        if idle >= share:
            return f"started after {window:g} s with the machine {idle:.0%} idle"
        if time.monotonic() >= deadline:
            return (f"NOT QUIET: no {window:g} s window with ≥ {share:.0%} idle CPU in {limit:g} s of waiting (best "
                    f"{best:.0%}); started anyway")
        note(f"waiting for an idle machine: {idle:.0%} idle, load {_loadavg()}")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------------------------------
# evidence of both kinds, and the brokers


def _evidence_material(work: Path) -> dict[str, Any]:
    """The MAA signing key (and the JWKS brokers trust), the SGX test platform, and the policy for both."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm
    from sgx_platform import SgxPlatform

    maa_key = ec.generate_private_key(ec.SECP256R1())
    (work / "maa-jwks.json").write_text(json.dumps(
        {"keys": [{**ECAlgorithm.to_jwk(maa_key.public_key(), as_dict=True), "kid": "bench"}]}))
    platform_ = SgxPlatform.from_sample(TESTDATA / "sgx_quote", TESTDATA / "sgx_quote_collateral.json")
    (work / "sgx-root.der").write_bytes(platform_.root_der)
    quote = (TESTDATA / "sgx_quote").read_bytes()
    mrenclave, mrsigner = quote[48 + 64:48 + 96].hex(), quote[48 + 128:48 + 160].hex()
    policy = {"name": "bench", "keys": ["local:bench*"], "release_lifetime": "10m", "allow": [
        {"type": "maa", "issuer": MAA_ISSUER, "claims": {"x-ms-sgx-mrenclave": mrenclave}},
        {"type": "sgx", "mrenclave": mrenclave, "mrsigner": mrsigner,
         "tcb_status": ["UpToDate", "ConfigurationAndSWHardeningNeeded"]}]}
    pem = maa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    import base64

    sample = {"type": "sgx", "quote": base64.b64encode(quote).decode(),
              "collateral": json.loads((TESTDATA / "sgx_quote_collateral.json").read_text())}
    return {"policy": policy, "spec": {
        "maa_key": pem, "maa_kid": "bench", "tests": TESTS, "sgx_platform": platform_.dumps(),
        "sample_evidence": sample,
        "maa_claims": {"iss": MAA_ISSUER, "x-ms-attestation-type": "sgx", "x-ms-sgx-is-debuggable": False,
                       "x-ms-sgx-mrenclave": mrenclave, "x-ms-sgx-mrsigner": mrsigner, "x-ms-ver": "1.0"}}}


def _brokers(args, work: Path, material: dict[str, Any]) -> tuple[list[dict[str, Any]], list]:
    """The configurations of part 1 (not started), and what else runs (Redis)."""
    pki = make_pki(work / "tls")
    kms, entry = make_keystore(work / "keys", "bench")
    from ppml.crypto.datakey import DataKey

    keys = [DataKey.generate() for _ in range(args.keys)]
    wrapped = [kms.wrap(k, "bench") for k in keys]
    audit_key = work / "keys" / "audit-key.json"
    verifiers = {"maa": {"jwks": str(work / "maa-jwks.json"), "issuers": [MAA_ISSUER]},
                 "sgx": {"root_ca": str(work / "sgx-root.der")}}
    common = {"pki": pki, "kms": [entry], "policies": [material["policy"]], "audit_key": audit_key,
              "limits": NO_LIMIT, "verifiers": verifiers}
    configs: list[dict[str, Any]] = []
    extras: list = []

    def add(label: str, replicas: list[Broker], evidence: tuple[str, ...], **facts: Any) -> None:
        for kind in evidence:
            configs.append({"label": f"{label}, {kind}", "setup": label, "evidence": kind, "replicas": replicas,
                            "wrapped": wrapped, "key_ids": [k.key_id for k in keys], "single": [], "loaded": [],
                            **facts})

    add("1 replica", [Broker(work / "one", **common)], ("maa", "sgx"), workers=1)
    add("1 replica, 2 workers", [Broker(work / "workers", **common, settings={"workers": 2})], ("maa", "sgx"),
        workers=2)
    if not args.skip_replicas:
        redis = Redis(work / "redis")
        extras.append(redis)
        secret = os.urandom(32).hex()
        nonces = {"secret": "env:PPML_BENCH_NONCE_SECRET", "redis": {"url": redis.url}}
        pair = [Broker(work / f"replica-{name}", **common, env={"PPML_BENCH_NONCE_SECRET": secret},
                       settings={"replica": name, "nonces": nonces}) for name in "ab"]
        add("2 replicas", pair, ("maa", "sgx"), workers=1, redis=redis)
    if args.baseline:
        base_verifiers = {"maa": verifiers["maa"], "sgx": {}}
        base_common = {**common, "verifiers": base_verifiers, "limits": {"requests_per_second": 1_000_000,
                                                                         "burst": 1_000_000}}
        add("baseline", [Broker(work / "baseline-maa", **base_common, baseline=args.baseline)], ("maa",), workers=1)
        # Intel's sample quote verifies only at a time inside its collateral's validity.
        add("baseline", [Broker(work / "baseline-sgx", **base_common, baseline=args.baseline,
                                settings={"verification_time": SAMPLE_TIME})], ("sgx-sample",), workers=1)
    return configs, extras


# ---------------------------------------------------------------------------------------------------
# part 1: load slices


def run_slice(config: dict[str, Any], spec_base: dict[str, Any], pool, *, clients: int, procs: int, seconds: float,
              warmup: float) -> dict[str, Any]:
    """``clients`` clients over ``procs`` processes against one configuration for ``seconds`` after ``warmup``."""
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    start = time.monotonic() + warmup
    end = start + seconds
    urls = [b.url for b in config["replicas"]]
    specs = [{**spec_base, "proc": i, "clients": n, "urls": urls, "start": start, "end": end,
              "evidence": config["evidence"], "baseline": config["setup"] == "baseline",
              "ca": str(config["replicas"][0].ca), "wrapped": [w.to_json() for w in config["wrapped"]],
              "key_ids": config["key_ids"]} for i, n in enumerate(shares)]
    futures = [pool.submit(run_clients, spec) for spec in specs]
    time.sleep(max(0.0, start - time.monotonic()))
    pids = [pid for b in config["replicas"] for pid in b.pids()]
    if config.get("redis") is not None:
        pids.append(config["redis"].process.pid)
    cpu_start, ticks_start = cpu_seconds(pids), machine_ticks()
    time.sleep(max(0.0, end - time.monotonic()))
    cpu_end, ticks_end = cpu_seconds(pids), machine_ticks()
    busy, idle, steal = (b - a for a, b in zip(ticks_start, ticks_end, strict=True))
    results = [f.result() for f in futures]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    share = (os.cpu_count() or 1) * seconds / max(1, busy + idle + steal)
    return {"seconds": seconds, "latencies": [x for r in results for x in r["latencies"]],
            "broker_cpu": cpu_end - cpu_start, "client_cpu": sum(r["cpu"] for r in results),
            "machine_busy": busy * share, "machine_steal": steal * share, "errors": dict(errors),
            "cold_clients": sum(r["cold_clients"] for r in results)}


def summarize(slices: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    seconds = sum(s["seconds"] for s in slices)
    latencies = [x for s in slices for x in s["latencies"]]
    errors: Counter[str] = Counter()
    for s in slices:
        errors.update(s["errors"])
    broker_cpu = sum(s["broker_cpu"] for s in slices) / seconds
    client_cpu = sum(s["client_cpu"] for s in slices) / seconds
    busy = sum(s["machine_busy"] for s in slices) / seconds
    rate = len(latencies) / seconds
    return {"clients": clients, "seconds": seconds, "releases": len(latencies), "rate": rate,
            "slice_rates": [round(len(s["latencies"]) / s["seconds"]) for s in slices],
            "p50_ms": _percentile(latencies, 0.50) * 1e3, "p99_ms": _percentile(latencies, 0.99) * 1e3,
            "max_ms": max(latencies) * 1e3 if latencies else float("nan"),
            "mean_ms": statistics.fmean(latencies) * 1e3 if latencies else float("nan"),
            "broker_cpu": broker_cpu, "client_cpu": client_cpu, "other_cpu": max(0.0, busy - broker_cpu - client_cpu),
            "machine_steal": sum(s["machine_steal"] for s in slices) / seconds,
            "broker_ms_per_release": broker_cpu / rate * 1e3 if rate else float("nan"),
            "client_ms_per_release": client_cpu / rate * 1e3 if rate else float("nan"),
            "errors": dict(errors), "cold_clients": sum(s["cold_clients"] for s in slices)}


def part_release_load(args, work: Path) -> list[dict[str, Any]]:
    material = _evidence_material(work)
    configs, extras = _brokers(args, work, material)
    brokers = list({id(b): b for c in configs for b in c["replicas"]}.values())
    context = multiprocessing.get_context("spawn")
    rows: list[dict[str, Any]] = []
    try:
        for broker in brokers:
            broker.start()
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.client_procs, mp_context=context) as pool:
            list(pool.map(_warm, range(args.client_procs)))  # imports happen before any timing
            if args.single_seconds > 0:
                for config in configs:
                    note(f"release load: 1 client, {config['label']}")
                    config["single"].append(run_slice(config, material["spec"], pool, clients=1, procs=1,
                                                      seconds=args.single_seconds, warmup=1.0))
            for turn in range(max(1, args.rounds)):
                order = configs[turn % len(configs):] + configs[:turn % len(configs)]
                for config in order:
                    piece = run_slice(config, material["spec"], pool, clients=args.clients, procs=args.client_procs,
                                      seconds=args.seconds / args.rounds, warmup=args.warmup)
                    config["loaded"].append(piece)
                    note(f"release load: {args.clients} clients, {config['label']} (round {turn + 1}): "
                         f"{len(piece['latencies']) / piece['seconds']:,.0f} releases/s, load {_loadavg()}")
    finally:
        exits = {id(b): b.stop() for b in brokers}
        for extra in extras:
            extra.stop()
    for config in configs:
        counters: Counter[str] = Counter()
        allowed = 0
        for broker in config["replicas"]:
            counters.update(broker.stop_counters())
            allowed += sum(1 for e in broker.audit() if e.get("decision") == "allow")
        for clients, slices in ((1, config["single"]), (args.clients, config["loaded"])):
            if slices:
                row = summarize(slices, clients)
                row.update(label=config["label"], setup=config["setup"], evidence=config["evidence"],
                           exit_codes=[exits[id(b)] for b in config["replicas"]], counters=dict(counters),
                           audit_allow=allowed)
                rows.append(row)
    return rows


def _warm(_: int) -> None:
    import cryptography.hazmat.primitives.hpke  # noqa: F401

    import ppml.keys.broker_protocol  # noqa: F401


# ---------------------------------------------------------------------------------------------------
# where a release's time goes: the broker's steps, timed in this process


def _timed(function, repeat: int) -> float:
    function()
    began = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - began) / repeat * 1e6


def part_steps(work: Path) -> dict[str, dict[str, float]]:
    """Microseconds of each step of a release inside the broker, for both evidence kinds, with this code;
    and what the steps the earlier broker took instead cost (full DCAP verification every time, a second
    canonical JSON dump, an fsync per entry, Starlette's request handling)."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ppml.attest.evidence import Evidence, binding_digest, open_verifier
    from ppml.attest.policy import load_policies
    from ppml.broker.audit import AuditSigner, canonical
    from ppml.crypto.datakey import DataKey
    from ppml.crypto.envelope import WrappedKey
    from ppml.keys.broker_protocol import EphemeralKey, release_info, seal_data_key

    material = _evidence_material(work)
    spec = material["spec"]
    from _release_client import _Evidence

    (work / "steps-policy.yaml").write_text(json.dumps(material["policy"]))
    policy = load_policies([work / "steps-policy.yaml"])[0]
    maa = open_verifier("maa", jwks=str(work / "maa-jwks.json"), issuers=[MAA_ISSUER])
    sgx = open_verifier("sgx", root_ca=str(work / "sgx-root.der"))
    sgx_full = open_verifier("sgx", root_ca=str(work / "sgx-root.der"), cache=0)
    nonce, public = os.urandom(32), EphemeralKey().public_bytes
    binding = binding_digest(nonce, public)
    wrapped = WrappedKey("local", "bench", "1", os.urandom(61))
    key = DataKey.generate()
    signer = AuditSigner(Ed25519PrivateKey.generate())
    audit = os.open(work / "steps-audit.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    entry = {"seq": 1, "time": "2026-01-01T00:00:00.000+00:00", "event": "release", "decision": "allow",
             "caller": {"address": "127.0.0.1"}, "evidence": {"type": "sgx", "digest": "ab" * 32, "identity": "x" * 50,
             "simulated": False}, "key": "local:bench", "version": "1", "policy": "bench", "reason": "r" * 40,
             "lifetime": 600, "key_id": "k" * 22, "prev": "cd" * 32}
    results: dict[str, dict[str, float]] = {}
    for kind, verifier in (("maa", maa), ("sgx", sgx)):
        make = _Evidence({**spec, "evidence": kind})
        body = (f'{{"nonce":"{base64.b64encode(nonce).decode()}","public_key":"{base64.b64encode(public).decode()}",'
                f'"evidence":{make(binding)},"keys":[{json.dumps(wrapped.to_json())}]}}').encode()
        parsed = json.loads(body)
        now = _dt.datetime.now(_dt.timezone.utc)
        fresh = lambda: Evidence.from_json(parsed["evidence"])  # noqa: E731 - a new object: nothing cached
        verified = verifier.verify(fresh(), at=now)
        steps = {
            "parse the request JSON": _timed(lambda: json.loads(body), 300),
            "evidence digest (canonical JSON)": _timed(lambda: fresh().digest, 300),
            "verify the evidence": _timed(lambda: verifier.verify(fresh(), at=now), 300),
            "policy": _timed(lambda: policy.evaluate(verified), 1000),
            "HPKE seal": _timed(lambda: seal_data_key(key, public, release_info(nonce, wrapped)), 1000),
            "audit entry: chain and sign": _timed(lambda: signer.sign(hashlib.sha256(canonical(entry)).hexdigest()),
                                                  1000),
        }
        if kind == "sgx":
            steps["verify in full (no reuse; the earlier broker, each time)"] = _timed(
                lambda: sgx_full.verify(fresh(), at=now), 100)
        steps["a second canonical dump (the earlier broker's size check)"] = _timed(
            lambda: json.dumps(parsed["evidence"], separators=(",", ":")), 300)
        results[kind] = steps
    line = canonical(entry) + b"\n"
    results["shared"] = {"write + fsync of one audit line (the earlier broker, per entry, under a lock)": _timed(
        lambda: (os.write(audit, line), os.fsync(audit)), 200)}
    os.close(audit)
    results["shared"].update(_http_layers())
    return results


def _http_layers() -> dict[str, float]:
    """Starlette's handling of one request, against the plain ASGI application's (no network)."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def endpoint(request):
        await request.body()
        return JSONResponse({"ok": 1}, headers={"Cache-Control": "no-store"})

    framework = Starlette(routes=[Route("/v1/nonce", endpoint, methods=["POST"])])

    async def plain(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"8")]})
        await send({"type": "http.response.body", "body": b'{"ok":1}'})

    scope = {"type": "http", "method": "POST", "path": "/v1/nonce", "raw_path": b"/v1/nonce", "query_string": b"",
             "headers": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "scheme": "https",
             "root_path": "", "http_version": "1.1", "asgi": {"version": "3.0"}}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    async def each(app, repeat: int) -> float:
        began = time.perf_counter()
        for _ in range(repeat):
            await app(dict(scope), receive, send)
        return (time.perf_counter() - began) / repeat * 1e6

    async def both() -> tuple[float, float]:
        await each(framework, 200)
        await each(plain, 200)
        return await each(framework, 3000), await each(plain, 3000)

    framework_us, plain_us = asyncio.run(both())
    return {"Starlette request handling (the earlier broker), per request": framework_us,
            "plain ASGI request handling, per request": plain_us}


# ---------------------------------------------------------------------------------------------------
# report


def print_report(args, machine: dict[str, str], rows, steps, tpch_rows) -> None:
    say("## Key broker (`benchmarks/broker_load.py`)")
    say()
    say(f"- nproc {machine['nproc']}; CPU `{machine['cpu']}`; Python {machine['python']}; cryptography "
        f"{machine['cryptography']}; uvicorn {machine['uvicorn']}; uvloop {machine['uvloop']}; httptools "
        f"{machine['httptools']}; dcap-qvl {machine['dcap']}; redis-server on loopback")
    say(f"- {machine['started']} → {machine['finished']}; load average {machine['load_start']} at the start, "
        f"{machine['load_end']} at the end; {machine['quiet']}")
    say(f"- command: `{machine['command']}`")
    if rows:
        say()
        say(f"### Release load: {args.clients} clients in {args.client_procs} processes, {args.keys} data keys; "
            f"{args.seconds:g} s per configuration in {args.rounds} slices rotating over the configurations, each "
            f"after {args.warmup:g} s; 1 client alone for {args.single_seconds:g} s")
        say()
        say("| configuration | evidence | clients | releases/s | per slice | p50 ms | p99 ms | max ms | broker CPU "
            "(cores) | clients CPU | other CPU | broker CPU ms / release | client CPU ms / release | errors |")
        say("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            slices = ", ".join(f"{x:,}" for x in r["slice_rates"]) if len(r["slice_rates"]) > 1 else ""
            say(f"| {r['setup']} | {r['evidence']} | {r['clients']} | {r['rate']:,.0f} | {slices} | "
                f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['broker_cpu']:.2f} | "
                f"{r['client_cpu']:.2f} | {r['other_cpu']:.2f} | {r['broker_ms_per_release']:.2f} | "
                f"{r['client_ms_per_release']:.2f} | {sum(r['errors'].values())} |")
        for r in rows:
            if r["errors"]:
                say(f"* errors ({r['label']}, {r['clients']} clients): {r['errors']}")
        busiest = max(r["other_cpu"] for r in rows)
        if busiest > 0.25:
            say(f"* NOTE: other processes used up to {busiest:.2f} of the {machine['nproc']} cores during the load "
                "windows (\"other CPU\"): releases/s and latencies measure the machine's load as much as the broker; "
                "CPU ms per release is the comparable figure")
        for r in rows:
            if r["clients"] > 1 and r["setup"] != "baseline":
                met = r["rate"] >= 1000 and r["p99_ms"] < 20
                say(f"* target ≥ 1,000 releases/s with p99 < 20 ms, {r['label']}: {'met' if met else 'not met'} "
                    f"({r['rate']:,.0f}/s, p99 {r['p99_ms']:.1f} ms)")
    if steps:
        say()
        say("### Where a release's time goes inside the broker (µs, one step at a time in one process)")
        say()
        say("| step | maa | sgx |")
        say("|---|---:|---:|")
        names = list(dict.fromkeys([*steps["maa"], *steps["sgx"]]))
        for name in names:
            say(f"| {name} | {steps['maa'].get(name, float('nan')):.0f} | {steps['sgx'].get(name, float('nan')):.0f} |")
        for name, value in steps["shared"].items():
            say(f"| {name} | {value:.0f} | {value:.0f} |")
    if tpch_rows:
        from _broker_tpch import report_tpch

        report_tpch(args, tpch_rows)


def check(rows, tpch_rows) -> list[str]:
    failures = []
    for r in rows:
        if r["errors"]:
            failures.append(f"{r['label']}: {sum(r['errors'].values())} failed releases")
        if any(code != 0 for code in r["exit_codes"]):
            failures.append(f"{r['label']}: broker exit {r['exit_codes']}")
    if tpch_rows:
        from _broker_tpch import check_tpch

        failures += check_tpch(tpch_rows)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per configuration (15)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--client-procs", type=int, default=2, help="processes the clients are spread over (2)")
    parser.add_argument("--keys", type=int, default=8, help="distinct data keys the clients ask for (8)")
    parser.add_argument("--rounds", type=int, default=3, help="slices per configuration, in rotating order (3)")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds of load before each slice (1.5)")
    parser.add_argument("--single-seconds", type=float, default=3.0,
                        help="seconds of one client alone per configuration (3; 0 skips)")
    parser.add_argument("--baseline", metavar="SRC", default=None,
                        help="also load the broker of an older ppml: the path of its src folder")
    parser.add_argument("--skip-replicas", action="store_true", help="no two-replica configuration (no Redis)")
    parser.add_argument("--skip-load", action="store_true", help="no release-load part")
    parser.add_argument("--skip-steps", action="store_true", help="no step timings")
    parser.add_argument("--tpch-scale", type=float, default=0.1, help="TPC-H scale factor (0.1)")
    parser.add_argument("--skip-tpch", action="store_true", help="no TPC-H part")
    parser.add_argument("--tpch-no-reuse", action="store_true",
                        help="also run the per-table-key variant with spark.python.worker.reuse=false")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for 5 s of ≥ 90%% idle CPU (0: start at once)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = parser.parse_args(argv)

    warnings.simplefilter("ignore")  # simulated attestation and test roots warn by design
    quiet = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else "started without waiting for an idle machine"
    machine = {"nproc": str(os.cpu_count()), "cpu": cpu_model(), "python": platform.python_version(),
               "cryptography": _version("cryptography"), "uvicorn": _version("uvicorn"), "uvloop": _version("uvloop"),
               "httptools": _version("httptools"), "dcap": _version("dcap-qvl"), "load_start": _loadavg(), "quiet": quiet,
               "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": " ".join([".venv/bin/python", "benchmarks/broker_load.py", *(argv or sys.argv[1:])])}
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ppml-broker-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        steps = {} if args.skip_steps else part_steps(work)
        rows = [] if args.skip_load else part_release_load(args, work)
        tpch_rows = []
        if not args.skip_tpch:
            from _broker_tpch import part_tpch

            tpch_rows = part_tpch(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    machine.update(load_end=_loadavg(), finished=_dt.datetime.now(_dt.timezone.utc).strftime("%H:%M UTC"))
    print_report(args, machine, rows, steps, tpch_rows)
    failures = check(rows, tpch_rows)
    say()
    for failure in failures:
        say(f"* FAIL: {failure}")
    if not failures:
        say("* PASS: every release opened to the expected key" + (" (the baseline's SGX quotes: refused as not bound)"
                                                                  if args.baseline and rows else "")
            + ("; TPC-H: broker KMS unwraps = distinct data keys" if tpch_rows else ""))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "load": rows, "steps": steps, "tpch": tpch_rows},
                                        indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
