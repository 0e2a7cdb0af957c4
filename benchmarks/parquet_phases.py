#!/usr/bin/env python3
"""Where a short TPC-H query's time goes on encrypted Parquet: planning, execution and the result's write,
each timed on its own, plaintext Parquet against ppml (Spark's own reader, PME), in one Spark session.

For each query, ``--repeat`` rounds alternate the variant that goes first. In each round:

* **plan**: the tables read (ppml: the manifest check of each table and the reader's options; the schema
  Spark inferred in the untimed first round is reused for the same checked files, where Spark's own reader
  on plaintext infers it on every read) and the query's DataFrame built;
* **run**: the query executed (``collect``): reading and decrypting the pages, the joins and aggregates;
* **write**: the result written (plaintext: Spark's Parquet writer; ppml: encrypted, with its data-set
  manifest and signed provenance record), from a cached copy of the result, so that only the write counts.

The tables are those that ``benchmarks/tpch_parquet.py`` prepares in its work folder (run it first). The
medians of the rounds are printed, with their ratio.

Usage::

    .venv/bin/python benchmarks/parquet_phases.py --workdir benchmarks/_data/tpch-sf1 --queries 12,14,15,17
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _report import note, say
from tpch import DEFAULT_WORKDIR, load_average, machine_info, make_session

PHASES = ("plan", "run", "write")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="tpch_parquet.py's work folder (default sf1)")
    parser.add_argument("--queries", default="12,14,15,17", help="comma-separated query numbers")
    parser.add_argument("--repeat", type=int, default=15, help="rounds per query (default 15)")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    args = parser.parse_args(argv)
    work = (args.workdir or DEFAULT_WORKDIR / "tpch-sf1").resolve()
    if not (work / "parquet-pme" / "_ppml_manifest").is_dir():
        print(f"no encrypted tables in {work / 'parquet-pme'}: run benchmarks/tpch_parquet.py first", file=sys.stderr)
        return 2

    from ppml.keys.settings import KeySettings
    from ppml.spark import PPMLContext
    from ppml.tpch.parquet import parquet_tables, spark_parquet_tables, write_result
    from ppml.tpch.queries import COLUMNS_USED, run_query

    spark = make_session(args.master)
    keys = KeySettings(keystore=str(work / "keystore.json"), passphrase=f"file:{work / 'keystore.pass'}")
    ctx = PPMLContext(spark, keys=keys, data_key=str(work / "data-key.json"))
    tables = {"plaintext": spark_parquet_tables(spark, work / "plain", scale=1),
              "ppml spark": parquet_tables(ctx, str(work / "parquet-pme"), "aes_gcm_v1", scale=1, engine="spark")}
    out = work / "results" / "phases"

    def one_round(number: int, name: str) -> dict[str, float]:
        started = time.perf_counter()
        df = run_query(number, tables[name].narrowed(COLUMNS_USED[number]))
        planned = time.perf_counter()
        rows = df.collect()
        ran = time.perf_counter()
        result = spark.createDataFrame(rows, df.schema).cache()
        result.count()
        written = time.perf_counter()
        write_result(ctx, result, str(out / name.split()[0]), "aes_gcm_v1", spark_writer=name == "plaintext",
                     label=f"TPC-H Q{number:02d}")
        done = time.perf_counter()
        result.unpersist()
        return {"plan": planned - started, "run": ran - planned, "write": done - written}

    say(f"# Planning, execution and write of TPC-H queries, plaintext Parquet vs ppml (median of {args.repeat})")
    say()
    for key, value in machine_info(spark.version).items():
        say(f"- {key}: {value}")
    say(f"- load average before: {load_average()}")
    say()
    say("| query | phase | plaintext ms | ppml spark ms | ppml − plaintext ms | ratio |")
    say("|---|---|---|---|---|---|")
    for number in (int(q) for q in args.queries.split(",")):
        seconds: dict[str, dict[str, list[float]]] = {n: {p: [] for p in PHASES} for n in tables}
        for name in tables:  # untimed: the first round of each variant
            one_round(number, name)
        for attempt in range(args.repeat):
            for name in (list(tables) if attempt % 2 == 0 else list(reversed(tables))):
                for phase, value in one_round(number, name).items():
                    seconds[name][phase].append(value)
        for phase in (*PHASES, "total"):
            plain, ours = (statistics.median(seconds[n][phase]) if phase != "total" else
                           statistics.median(map(sum, zip(*seconds[n].values()))) for n in tables)
            say(f"| Q{number:02d} | {phase} | {plain * 1000:.0f} | {ours * 1000:.0f} | {(ours - plain) * 1000:+.0f} | "
                f"{ours / plain:.2f} |")
        note(f"Q{number:02d} done (load {load_average()})")
    say()
    say(f"- load average after: {load_average()}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
