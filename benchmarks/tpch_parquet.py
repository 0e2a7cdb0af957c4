#!/usr/bin/env python3
"""TPC-H on encrypted Parquet (PME) against plaintext Parquet, side by side, in one run and one Spark session.

Variants, all in one ``SparkSession`` (ppml's secure defaults, ``local[2]``, driver memory 4g, 8 shuffle
partitions):

1. **plaintext**: ``<table>.parquet`` read with Spark's own Parquet reader; results written with Spark's
   Parquet writer;
2. **ppml spark**: the same tables encrypted with PME (AES_GCM_V1, encrypted footer, snappy, the same row
   groups) read with Spark's own Parquet reader through ppml's parquet-java key client and key agent
   (``PPMLContext`` with ``parquet_engine="spark"``); results written encrypted the same way;
3. **ppml pyarrow**: the encrypted tables through the ``ppml`` data source (pyarrow in Spark's Python
   workers), results written encrypted through it.

Both encrypted variants check every table against its data-set manifest before reading it, as they always
do. Then: the write of lineitem (one cached DataFrame) with Spark's plaintext Parquet writer and with each
ppml engine, and lineitem read into Arrow by pyarrow (plaintext) and by ``ppml.read_parquet`` (encrypted):
whole, four columns, and four columns with a filter.

Every answer is checked against the DuckDB oracle; a mismatch aborts with exit code 1. Fairness as in
``benchmarks/tpch.py``: inputs read once before timing, one untimed query per variant first, variant order
rotating from query to query, the load average reported.

Usage::

    .venv/bin/python benchmarks/tpch_parquet.py --scale 0.01                # quick check
    .venv/bin/python benchmarks/tpch_parquet.py --scale 1 --repeat 2        # the benchmark
    .venv/bin/python benchmarks/tpch_parquet.py --scale 1 --repeat 5 --statistic median --skip-pyarrow-engine
                                                                            # per query, with less noise
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from _report import note, say
from tpch import (CHEAP_KDF, DEFAULT_WORKDIR, Mismatch, Timing, _ratio, load_average, machine_info, make_session,
                  warm_page_cache)

PLAIN, NATIVE, ARROW = "plaintext", "ppml spark", "ppml pyarrow"
TARGET_TOTAL, TARGET_QUERY, TARGET_WRITE, TARGET_PYARROW = 1.05, 1.15, 1.1, 1.05
STATISTICS: dict[str, Callable[[list[float]], float]] = {"best": min, "median": statistics.median}


@dataclass
class Setup:
    work: Path
    plain: Path
    encrypted: Path
    keystore: Path
    pass_file: Path
    data_key: Path
    scale: float


def prepare(work: Path, scale: float) -> Setup:
    """Tables (``.tbl`` and plaintext Parquet), a key store, a data key and the encrypted tables (reused)."""
    from ppml.keys import secure_files
    from ppml.keys.datakey_file import DataKeyFile
    from ppml.keys.local import LocalKms
    from ppml.keys.settings import KeySettings
    from ppml.parquet.settings import ParquetEncryption
    from ppml.tpch.gen import generate
    from ppml.tpch.parquet import encrypt_tables, table_file, write_plain_parquet

    work.mkdir(parents=True, exist_ok=True)
    plain = work / "plain"
    generate(scale, plain)
    started = time.perf_counter()
    write_plain_parquet(plain)
    note(f"plaintext Parquet in {plain} ({time.perf_counter() - started:.1f} s, reused if it was there)")
    pass_file = work / "keystore.pass"
    if not pass_file.exists():
        secure_files.write_private(pass_file, secrets.token_urlsafe(24).encode())
    kms = LocalKms(work / "keystore.json", pass_file.read_text().strip())
    if not kms.exists:
        kms.create_store(kdf=CHEAP_KDF)
    if "tpch" not in {k.name for k in kms.list_keys()}:
        kms.create_key("tpch")
    data_key = work / "data-key.json"
    if not data_key.exists():
        key, wrapped = kms.generate_data_key("tpch")
        DataKeyFile.new(key.key_id, (wrapped,)).save(data_key)
    encrypted = work / "parquet-pme"
    keys = KeySettings(keystore=str(kms.path), passphrase=f"file:{pass_file}")
    if not Path(table_file(encrypted, "lineitem")).exists():
        started = time.perf_counter()
        encrypt_tables(str(plain), str(encrypted), keys=keys, encryption=ParquetEncryption(footer_key="tpch"),
                       data_key=str(data_key), force=True)
        note(f"encrypted the Parquet tables into {encrypted} in {time.perf_counter() - started:.1f} s")
    return Setup(work, plain, encrypted, kms.path, pass_file, data_key, scale)


@dataclass
class Variant:
    name: str
    tables: Callable[[], object]
    output_mode: str
    out_dir: Path
    spark_writer: bool = False


def run_one(ctx, variant: Variant, number: int, oracle, repeat: int) -> Timing:
    from ppml.tpch.queries import COLUMNS_USED
    from ppml.tpch.runner import run_queries

    timing = None
    for attempt in range(repeat):
        tables = variant.tables().narrowed(COLUMNS_USED[number])
        [run] = run_queries(ctx, tables, str(variant.out_dir), variant.output_mode, [number],
                            oracle=oracle if attempt == 0 else None, spark_writer=variant.spark_writer, parquet=True)
        if run.mismatches:
            for line in run.mismatches[:10]:
                print(f"MISMATCH [{variant.name}] {line}", file=sys.stderr)
            raise Mismatch(f"{variant.name}: {run.query} differs from the DuckDB oracle")
        timing = timing or Timing(run.query, run.rows)
        timing.seconds.append(run.seconds)
    assert timing is not None
    return timing


def side_by_side(ctx, variants: Sequence[Variant], numbers: Sequence[int], oracle, repeat: int,
                 statistic: Callable[[list[float]], float]):
    """Each query's runs interleaved over the variants (the order rotating from run to run), so a busy
    moment of the machine does not fall on one variant's runs only."""
    results: dict[str, dict[int, Timing]] = {v.name: {} for v in variants}
    for index, number in enumerate(numbers):
        for attempt in range(repeat):
            shift = (index + attempt) % len(variants)
            for variant in list(variants[shift:]) + list(variants[:shift]):
                run = run_one(ctx, variant, number, oracle if attempt == 0 else None, 1)
                results[variant.name].setdefault(number, Timing(run.query, run.rows)).seconds.extend(run.seconds)
        for variant in variants:
            timing = results[variant.name][number]
            note(f"Q{number:02d} {variant.name:<14} {statistic(timing.seconds):7.2f} s  "
                 f"({timing.rows} rows, load {load_average()})")
    return results


def measure_writes(ctx, setup: Setup, repeat: int) -> dict[str, object]:
    """lineitem from one cached DataFrame: Spark's plaintext Parquet writer against each ppml engine."""
    df = ctx.spark.read.parquet(str(setup.plain / "lineitem.parquet")).cache()
    rows = df.count()
    out = setup.work / "results" / "write"
    legs: list[tuple[str, Callable[[str], None]]] = [
        ("spark Parquet (plaintext)", lambda p: df.write.mode("overwrite").parquet(p)),
        ("ppml spark (PME)", lambda p: ctx.write(df).mode("overwrite").option("parquetEngine", "spark").parquet(p)),
        ("ppml pyarrow (PME)", lambda p: ctx.write(df).mode("overwrite").option("parquetEngine", "pyarrow").parquet(p)),
    ]
    seconds: dict[str, list[float]] = {name: [] for name, _ in legs}
    sizes: dict[str, int] = {}
    for index, (name, write) in enumerate(legs):  # untimed warm-up of each writer on a slice
        warm = out / f"warmup-{index}"
        small = df.limit(1000)
        (small.write.mode("overwrite").parquet(str(warm)) if index == 0 else
         ctx.write(small).mode("overwrite").option("parquetEngine", name.split()[1]).parquet(str(warm)))
        shutil.rmtree(warm, ignore_errors=True)
    for attempt in range(repeat):
        for name, write in (legs if attempt % 2 == 0 else list(reversed(legs))):
            target = out / name.split()[1]
            shutil.rmtree(target, ignore_errors=True)
            os.sync()
            started = time.perf_counter()
            write(str(target))
            seconds[name].append(time.perf_counter() - started)
            sizes[name] = sum(p.stat().st_size for p in target.iterdir() if p.name.endswith(".parquet"))
            note(f"write lineitem {name:<28} {seconds[name][-1]:7.2f} s (load {load_average()})")
    for name in ("ppml spark (PME)", "ppml pyarrow (PME)"):
        back = ctx.read().parquet(str(out / name.split()[1])).count()
        if back != rows:
            raise Mismatch(f"the {name} write of lineitem reads back {back} rows, not {rows}")
    df.unpersist()
    return {"rows": rows, "partitions": df.rdd.getNumPartitions(), "seconds": seconds, "bytes": sizes}


def measure_pyarrow(setup: Setup, repeat: int) -> dict[str, dict[str, list[float]]]:
    """lineitem into Arrow: pyarrow on the plaintext file against ppml.read_parquet on the encrypted one."""
    import pyarrow.parquet as pq

    import ppml
    from ppml.keys.settings import KeySettings

    keys = KeySettings(keystore=str(setup.keystore), passphrase=f"file:{setup.pass_file}")
    plain, encrypted = str(setup.plain / "lineitem.parquet"), str(setup.encrypted / "lineitem.parquet")
    columns = ["l_orderkey", "l_quantity", "l_extendedprice", "l_shipdate"]
    cases = {
        "whole table": {},
        "4 columns": {"columns": columns},
        "4 columns, l_quantity < 5": {"columns": columns, "filters": [("l_quantity", "<", 5.0)]},
    }
    results: dict[str, dict[str, list[float]]] = {case: {"pyarrow": [], "ppml": []} for case in cases}
    ppml.read_parquet(encrypted, keys=keys, columns=["l_orderkey"])  # unwrap the keys once, untimed
    for attempt in range(max(3, repeat)):
        for case, arguments in cases.items():
            legs = [("pyarrow", lambda: pq.read_table(plain, **arguments)),
                    ("ppml", lambda: ppml.read_parquet(encrypted, keys=keys, **arguments))]
            for leg, read in (legs if attempt % 2 == 0 else list(reversed(legs))):
                started = time.perf_counter()
                table = read()
                results[case][leg].append(time.perf_counter() - started)
                del table
    return results


def query_table(results, numbers, statistic: Callable[[list[float]], float]) -> list[str]:
    arrow = ARROW in results
    head = "| query | rows | plaintext Parquet s | ppml spark s | ratio |" + (" ppml pyarrow s | ratio |" if arrow else "")
    lines = [head, "|---|---|---|---|---|" + ("---|---|" if arrow else "")]
    totals = {name: 0.0 for name in results}
    for n in numbers:
        p, s = results[PLAIN][n], results[NATIVE][n]
        plain, native = statistic(p.seconds), statistic(s.seconds)
        line = f"| {p.query} | {s.rows:,} | {plain:.2f} | {native:.2f} | {_ratio(native, plain)} |"
        if arrow:
            a = results[ARROW][n]
            line += f" {statistic(a.seconds):.2f} | {_ratio(statistic(a.seconds), statistic(p.seconds))} |"
        lines.append(line)
        for name in results:
            totals[name] += statistic(results[name][n].seconds)
    total = (f"| **total** | | **{totals[PLAIN]:.2f}** | **{totals[NATIVE]:.2f}** | "
             f"**{_ratio(totals[NATIVE], totals[PLAIN])}** |")
    if arrow:
        total += f" **{totals[ARROW]:.2f}** | **{_ratio(totals[ARROW], totals[PLAIN])}** |"
    lines.append(total)
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="TPC-H scale factor (default 1)")
    parser.add_argument("--queries", default=None, help="comma-separated query numbers (default: all 22)")
    parser.add_argument("--workdir", type=Path, default=None, help="default benchmarks/_data/tpch-sfS")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of everything (default 1)")
    parser.add_argument("--statistic", choices=sorted(STATISTICS), default="best",
                        help="what counts of each query's runs: the best (default) or the median")
    parser.add_argument("--warmup-query", type=int, default=3, help="untimed query per variant (default 3)")
    parser.add_argument("--skip-pyarrow-engine", action="store_true", help="leave out the ppml pyarrow variant")
    parser.add_argument("--json", type=Path, default=None, help="also write all numbers here as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from ppml.keys.settings import KeySettings
    from ppml.spark import PPMLContext
    from ppml.tpch.oracle import Oracle
    from ppml.tpch.parquet import parquet_tables, spark_parquet_tables
    from ppml.tpch.spec import parse_query_numbers

    numbers = parse_query_numbers(args.queries.split(",") if args.queries else None)
    work = (args.workdir or DEFAULT_WORKDIR / f"tpch-sf{args.scale:g}").resolve()
    load_before = load_average()
    setup = prepare(work, args.scale)
    oracle = Oracle(setup.plain, scale=setup.scale)
    cache_note = warm_page_cache([setup.plain, setup.encrypted])
    note(cache_note)
    spark = make_session(args.master)
    results_dir = work / "results"
    try:
        info = machine_info(spark.version)
        keys = KeySettings(keystore=str(setup.keystore), passphrase=f"file:{setup.pass_file}")
        ctx = PPMLContext(spark, keys=keys, data_key=str(setup.data_key))
        enc, scale = str(setup.encrypted), setup.scale
        variants = [
            Variant(PLAIN, lambda: spark_parquet_tables(spark, setup.plain, scale=scale), "plain_text",
                    results_dir / "parquet-plain", spark_writer=True),
            Variant(NATIVE, lambda: parquet_tables(ctx, enc, "aes_gcm_v1", scale=scale, engine="spark"),
                    "aes_gcm_v1", results_dir / "parquet-spark"),
        ]
        if not args.skip_pyarrow_engine:
            variants.append(Variant(ARROW, lambda: parquet_tables(ctx, enc, "aes_gcm_v1", scale=scale,
                                                                   engine="pyarrow"),
                                    "aes_gcm_v1", results_dir / "parquet-pyarrow"))
        note(f"warm-up: Q{args.warmup_query:02d} once per variant, untimed")
        for variant in variants:
            run_one(ctx, variant, args.warmup_query, oracle, 1)
        started = time.perf_counter()
        checks = 0
        for table in ("lineitem", "orders", "part"):
            from ppml.parquet.datasets import checked_parts

            checks += len(checked_parts(f"{enc}/{table}.parquet", keyring=keys.keyring()))
        check_seconds = (time.perf_counter() - started) / 3
        statistic = STATISTICS[args.statistic]
        main_results = side_by_side(ctx, variants, numbers, oracle, args.repeat, statistic)
        writes = measure_writes(ctx, setup, args.repeat)
    finally:
        spark.stop()
        oracle.close()
    arrow = measure_pyarrow(setup, args.repeat)
    load_after = load_average()

    say(f"## TPC-H scale {args.scale:g} on Parquet: plaintext with Spark's reader vs PME through ppml")
    say()
    say(f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`")
    say(f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM; Python {info['python']}, "
        f"Spark {info['spark']}, {info['java']}, pyarrow {info['pyarrow']}")
    say(f"- session: master {args.master}, driver memory 4g, 8 shuffle partitions, ppml secure defaults, one session")
    say(f"- load average (1, 5, 15 min): before {load_before}; after {load_after}")
    say(f"- page cache: {cache_note}")
    say(f"- files: snappy, row groups of up to 1,048,576 rows, money as doubles in both; encrypted: AES_GCM_V1, "
        f"encrypted footer, every column under master key `tpch`; {args.statistic} of {args.repeat} run(s) "
        "per cell, each query's runs interleaved over the variants")
    say(f"- driver-side check of a table against its data-set manifest before each read: "
        f"{check_seconds * 1000:.0f} ms on average")
    say("- every answer of every variant matched the DuckDB oracle; timings include planning, the query and "
        "writing the result as Parquet (plaintext: Spark's writer; ppml: encrypted, same engine)")
    say()
    say("### Per query (seconds)")
    say()
    for line in query_table(main_results, numbers, statistic):
        say(line)
    say()
    say(f"### Write: lineitem ({writes['rows']:,} rows) from one cached DataFrame")
    say()
    base = min(writes["seconds"]["spark Parquet (plaintext)"])
    say("| writer | best s | all runs | MB | ratio |")
    say("|---|---|---|---|---|")
    for name, runs in writes["seconds"].items():
        say(f"| {name} | {min(runs):.2f} | {', '.join(f'{s:.2f}' for s in runs)} | "
            f"{writes['bytes'][name] / 1e6:,.0f} | {_ratio(min(runs), base)} |")
    say()
    say("### pyarrow: lineitem into an Arrow table (seconds, best / median)")
    say()
    say("| read | pyarrow, plaintext | ppml.read_parquet, PME | ratio (best) |")
    say("|---|---|---|---|")
    for case, legs in arrow.items():
        say(f"| {case} | {min(legs['pyarrow']):.3f} / {statistics.median(legs['pyarrow']):.3f} | "
            f"{min(legs['ppml']):.3f} / {statistics.median(legs['ppml']):.3f} | "
            f"{_ratio(min(legs['ppml']), min(legs['pyarrow']))} |")
    say()
    native = {n: statistic(main_results[NATIVE][n].seconds) for n in numbers}
    plain = {n: statistic(main_results[PLAIN][n].seconds) for n in numbers}
    total_plain, total_native = sum(plain.values()), sum(native.values())
    slow = [(main_results[NATIVE][n].query, native[n] / plain[n])
            for n in numbers if native[n] > TARGET_QUERY * plain[n]]
    write_ratio = min(writes["seconds"]["ppml spark (PME)"]) / base
    arrow_ratio = min(arrow["whole table"]["ppml"]) / min(arrow["whole table"]["pyarrow"])
    say("### Targets (ppml spark, the default engine)")
    say()
    say(f"- total ≤ {TARGET_TOTAL}× plaintext Parquet: {total_native / total_plain:.2f} → "
        + ("**met**" if total_native <= TARGET_TOTAL * total_plain else "**not met**"))
    say(f"- no query above {TARGET_QUERY}×: " + ("**met**" if not slow else "**not met**: "
                                                  + ", ".join(f"{q} {r:.2f}×" for q, r in slow)))
    say(f"- encrypted write of lineitem ≤ {TARGET_WRITE}× Spark's plaintext write: {write_ratio:.2f} → "
        + ("**met**" if write_ratio <= TARGET_WRITE else "**not met**"))
    say(f"- pyarrow read ≤ {TARGET_PYARROW}× plaintext (whole lineitem): {arrow_ratio:.2f} → "
        + ("**met**" if arrow_ratio <= TARGET_PYARROW else "**not met**"))
    if args.json:
        args.json.write_text(json.dumps({
            "scale": args.scale, "machine": info, "load_before": load_before, "load_after": load_after,
            "main": {v: {n: asdict(t) for n, t in r.items()} for v, r in main_results.items()},
            "writes": writes, "pyarrow": arrow, "manifest_check_seconds": check_seconds,
        }, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Mismatch as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
