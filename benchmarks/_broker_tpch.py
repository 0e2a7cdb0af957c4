"""Part 2 of the broker benchmark: the KMS calls and releases of a whole TPC-H run with every key from the broker.

TPC-H data at ``--tpch-scale`` is encrypted (``aes_gcm_stream``) under one data key, and again under one data
key per table. A broker holding the key store (simulated policy, default limits and key cache) serves
``ppml tpch run ENC OUT aes_gcm_stream aes_gcm_stream --data-key DK --master local[2]`` (all 22 queries), run
with ``PPML_BROKER_*`` set, no ``PPML_KEYSTORE*`` variables and ``HOME`` pointing at an empty folder, so every
key comes from the broker. After the run the broker is stopped and its audit log gives the release requests,
the distinct caller processes, the distinct data keys and the broker's KMS unwraps; Spark's event log gives
the number of tasks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _broker_setup import Broker, make_keystore, make_pki
from _report import note, say

TPCH_CLAIMS = {"app": "tpch"}


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
    from ppml.crypto.formats import DEFAULT_FORMAT
    from ppml.io.encryption import Encryption
    from ppml.io.files import encrypt
    from ppml.keys.datakey_file import DataKeyFile
    from ppml.tpch.gen import generate
    from ppml.tpch.runner import encrypt_tables
    from ppml.tpch.schema import TABLE_NAMES

    plain = work / "tpch-plain"
    started = time.perf_counter()
    generate(args.tpch_scale, plain)
    note(f"TPC-H scale {args.tpch_scale:g} generated in {time.perf_counter() - started:.1f} s")
    pki = make_pki(work / "tpch-tls")
    kms, entry = make_keystore(work / "tpch-keys", "tpch")
    audit_key = work / "tpch-keys" / "audit-key.json"

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
        broker = Broker(work / f"tpch-broker-{index}", pki, [entry], [policy], audit_key=audit_key).start()
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


def report_tpch(args, tpch_rows) -> None:
    """The TPC-H part of the report."""
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


def check_tpch(tpch_rows) -> list[str]:
    failures = []
    for r in tpch_rows:
        if r["kms_unwraps"] != r["distinct_keys"] or r["distinct_keys"] != r["data_keys"]:
            failures.append(f"TPC-H {r['label']}: {r['kms_unwraps']} KMS unwraps for {r['distinct_keys']} distinct "
                            f"released keys ({r['data_keys']} data keys)")
        if r["broker_exit"] != 0 or r["denied"]:
            failures.append(f"TPC-H {r['label']}: broker exit {r['broker_exit']}, {r['denied']} denied")
    return failures
