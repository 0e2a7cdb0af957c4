#!/usr/bin/env python3
"""The main job's comparison (``ppml tpch demo``), repeated: encrypted and plaintext side by side, medians.

``ppml tpch demo`` runs each query once per variant, so on a shared machine one slow moment decides a
query's ratio. This runs the demo's own two variants, built exactly as the demo builds them (its Spark
session, key store, encrypted tables, warm-up and result writers), for several rounds, and reports each
variant's median per query. Within a round each query runs in both variants back to back, and which
variant goes first alternates from query to query and from round to round, so both see the same load
and neither is always the one that finds the query's code already compiled.

Usage (from the repository root; the demo's folder is created as ``ppml tpch demo --dir`` does)::

    .venv/bin/python benchmarks/tpch_demo.py --dir demo --rounds 3
    .venv/bin/python benchmarks/tpch_demo.py --dir demo --queries 13,22 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _report import cpu_model, note, say


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("demo"), help="the demo's working folder (default demo)")
    parser.add_argument("--scale", type=float, default=0.1, help="TPC-H scale factor (default 0.1, the demo's)")
    parser.add_argument("--queries", default=None, help="comma-separated query numbers (default: all 22)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of every query in each variant")
    parser.add_argument("--master", default="local[*]", help="Spark master (default local[*], the demo's)")
    args = parser.parse_args(argv)

    from ppml.cli._common import demo_keys
    from ppml.cli.tpch import _context, _session
    from ppml.crypto.formats import DEFAULT_FORMAT, PLAINTEXT
    from ppml.io.encryption import Encryption
    from ppml.tpch.gen import generate
    from ppml.tpch.oracle import Oracle
    from ppml.tpch.runner import Variant, _run_one, encrypt_tables, ppml_tables, spark_csv_tables, warm_up

    numbers = [int(q) for q in args.queries.split(",")] if args.queries else list(range(1, 23))
    directory = args.dir.resolve()
    work = directory / f"tpch-sf{args.scale:g}"
    generate(args.scale, work / "plain")
    key_file = directory / "tpch-data-key.json"
    keys, record, key = demo_keys(directory, "tpch", key_file, lambda text, **facts: note(text))
    encrypted = work / "encrypted"
    if not (encrypted / "lineitem.tbl.ppml").exists():
        encrypt_tables(str(work / "plain"), str(encrypted), Encryption(DEFAULT_FORMAT, key, record.envelope),
                       force=True)

    started_load = os.getloadavg()
    spark = _session(args.master, None, "ppml-tpch-demo-bench")
    try:
        ctx = _context(spark, data_key=key_file, keys=keys)
        variants = [
            Variant(ppml_tables(ctx, str(encrypted), DEFAULT_FORMAT, scale=args.scale),
                    str(work / "bench-encrypted"), DEFAULT_FORMAT, oracle=Oracle(work / "plain"), label="encrypted"),
            Variant(spark_csv_tables(spark, work / "plain", scale=args.scale), str(work / "bench-plaintext"),
                    PLAINTEXT, spark_writer=True, label="plaintext"),
        ]
        began = time.perf_counter()
        warm_up(ctx, *variants)
        note(f"warm-up {time.perf_counter() - began:.1f} s")
        seconds: dict[tuple[int, int], list[float]] = {(v, q): [] for v in range(2) for q in numbers}
        for turn in range(args.rounds):
            for index, number in enumerate(numbers):
                order = (0, 1) if (turn + index) % 2 == 0 else (1, 0)
                for v in order:
                    run = _run_one(ctx, variants[v], number)
                    if run.mismatches:
                        note(f"{variants[v].label} {run.query}: {run.mismatches[0]}")
                        return 1
                    seconds[(v, number)].append(run.seconds)
                enc, plain = seconds[(0, number)][-1], seconds[(1, number)][-1]
                note(f"round {turn + 1} Q{number:02d} encrypted {enc:.2f} s plaintext {plain:.2f} s "
                     f"({enc / plain:.2f}×), load {os.getloadavg()[0]:.1f}")
    finally:
        spark.stop()
    ended_load = os.getloadavg()

    say(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {sys.version.split()[0]}, Spark {spark.version}")
    say(f"load average at start {started_load[0]:.2f} / {started_load[1]:.2f} / {started_load[2]:.2f}, "
        f"at end {ended_load[0]:.2f} / {ended_load[1]:.2f} / {ended_load[2]:.2f}")
    say(f"scale {args.scale:g}, {args.rounds} rounds, medians in seconds")
    say("")
    say("| query | encrypted s | plaintext s | ratio | encrypted runs | plaintext runs |")
    say("|---|---:|---:|---:|---|---|")
    total_enc = total_plain = 0.0
    worst = (0.0, "")
    for number in numbers:
        enc, plain = statistics.median(seconds[(0, number)]), statistics.median(seconds[(1, number)])
        total_enc, total_plain = total_enc + enc, total_plain + plain
        worst = max(worst, (enc / plain, f"Q{number:02d}"))
        say(f"| Q{number:02d} | {enc:.2f} | {plain:.2f} | {enc / plain:.2f} | "
            f"{', '.join(f'{s:.2f}' for s in seconds[(0, number)])} | "
            f"{', '.join(f'{s:.2f}' for s in seconds[(1, number)])} |")
    say(f"| **total** | **{total_enc:.2f}** | **{total_plain:.2f}** | **{total_enc / total_plain:.2f}** | | |")
    say("")
    say(f"highest ratio: {worst[1]} {worst[0]:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
