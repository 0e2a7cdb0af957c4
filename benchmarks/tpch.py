#!/usr/bin/env python3
"""TPC-H with Spark on plaintext and on encrypted tables, side by side, in one run and one Spark session.

Variants, all in the same ``SparkSession`` (ppml's secure defaults from :func:`ppml.spark.secure_session`,
``local[2]`` by default, driver memory 4g, 8 shuffle partitions):

1. **plaintext**: the ``.tbl`` files read with Spark's native CSV reader (:func:`tbl_tables`), results
   written with Spark's own CSV writer (``run_queries(..., spark_writer=True)``);
2. **aes_gcm_stream**: the same tables encrypted with ppml's ``aes_gcm_stream`` (1 MiB segments), read
   through ppml with column pruning and filter pushdown on, results written encrypted;
3. **cbc**: BigDL's ``aes/cbc/pkcs5padding`` through ppml (results written in CBC too). A CBC file cannot
   be entered midway, so each file is one task: with eight single-file tables a query reads lineitem
   with one task however many cores there are.

Then, on the encrypted variant, what column pruning and filter pushdown each buy (a few queries, with
pruning off, with pushdown off, and through ``run_queries`` alone, which shows whether run_queries itself
hands the reader the query's columns), and the cost of a
write: lineitem from one cached DataFrame, with Spark's CSV writer and with ppml's writer.

Every answer is compared with the DuckDB oracle (the specification's SQL over the plaintext folder); a
mismatch aborts the run with exit code 1: speed without correctness is meaningless.

Fairness: all input files (plaintext, aes_gcm_stream, CBC) are read once before anything is timed, so all
variants run from a warm page cache (the run refuses to claim so when they do not fit in free memory);
one small query per variant runs untimed first (JVM, JIT, Python workers, key unwrapping); and the order
of the variants rotates from one query to the next, so that drift in machine load does not favour one.

Usage::

    .venv/bin/python benchmarks/tpch.py --scale 0.01                 # quick check
    .venv/bin/python benchmarks/tpch.py --scale 1                    # the benchmark (tens of minutes on 2 cores)
    .venv/bin/python benchmarks/tpch.py --scale 1 --queries 1,6 --skip-cbc --repeat 3
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _report import cpu_model, note, say

HERE = Path(__file__).resolve().parent
DEFAULT_WORKDIR = HERE / "_data"
# Argon2id: OWASP's minimum (19 MiB, 2 passes): real, but opens in a few tens of milliseconds.
CHEAP_KDF = {"memory_kib": 19 * 1024, "iterations": 2, "lanes": 1}
TARGET_TOTAL = 1.0
TARGET_QUERY = 1.2
TARGET_WRITE = 1.3

PLAIN, GCM, CBC = "plaintext", "aes_gcm_stream", "cbc"
CBC_MODE = "aes/cbc/pkcs5padding"


# ---------------------------------------------------------------------------------------------------
# machine


def _mem_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def machine_info(spark_version: str | None = None) -> dict[str, object]:
    import cryptography
    import duckdb
    import pyarrow
    import pyspark

    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        java = "unknown"
    total = _mem_kib("MemTotal")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "ram_gib": round(total / 2**20, 1) if total else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
        "spark": spark_version,
        "java": java,
        "pyarrow": pyarrow.__version__,
        "duckdb": duckdb.__version__,
        "cryptography": cryptography.__version__,
    }


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


# ---------------------------------------------------------------------------------------------------
# data and keys


@dataclass
class Setup:
    work: Path
    plain: Path
    gcm: Path
    cbc: Path | None
    keystore: Path
    pass_file: Path
    data_key: Path
    bigdl_pk: Path | None
    bigdl_data_key: Path | None
    scale: float


def _complete(folder: Path, suffix: str) -> bool:
    from ppml.tpch.schema import TABLE_NAMES

    return all((folder / f"{t}.tbl{suffix}").is_file() for t in TABLE_NAMES)


def prepare(work: Path, scale: float, with_cbc: bool) -> Setup:
    """Generate the tables, keys and encrypted copies in ``work`` (everything reused when already there)."""
    from ppml.io.encryption import Encryption
    from ppml.keys import secure_files
    from ppml.keys.bigdl import PlaintextPrimaryKeyKms
    from ppml.keys.datakey_file import DataKeyFile
    from ppml.keys.keyring import KeyRing
    from ppml.keys.local import LocalKms
    from ppml.tpch.gen import generate
    from ppml.tpch.runner import encrypt_tables

    work.mkdir(parents=True, exist_ok=True)
    plain = work / "plain"
    started = time.perf_counter()
    generate(scale, plain)
    note(f"TPC-H scale {scale:g} in {plain} ({time.perf_counter() - started:.1f} s, reused if it was there)")

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
    record, key = KeyRing([kms]).open_data_key_file(str(data_key))

    gcm = work / "aes_gcm_stream"
    if not _complete(gcm, ".ppml"):
        started = time.perf_counter()
        report = encrypt_tables(str(plain), str(gcm), Encryption(GCM, key, record.envelope), force=True)
        note(f"encrypted {report.files} tables with aes_gcm_stream into {gcm} in {time.perf_counter() - started:.1f} s")

    cbc = bigdl_pk = bigdl_dk = None
    if with_cbc:
        bigdl_pk, bigdl_dk, cbc = work / "bigdl-primary-key.b64", work / "bigdl-data-key.json", work / "cbc"
        if not bigdl_pk.exists():
            secure_files.write_private(bigdl_pk, base64.b64encode(secrets.token_bytes(32)))
        bigdl_kms = PlaintextPrimaryKeyKms.from_base64(bigdl_pk.read_text().strip())
        if not bigdl_dk.exists():
            bkey, bwrapped = bigdl_kms.generate_data_key("")
            DataKeyFile.new(bkey.key_id, (bwrapped,)).save(bigdl_dk)
        brecord, bkey = KeyRing([bigdl_kms]).open_data_key_file(str(bigdl_dk))
        if not _complete(cbc, ".cbc"):
            started = time.perf_counter()
            report = encrypt_tables(str(plain), str(cbc), Encryption(CBC_MODE, bkey, brecord.envelope), force=True)
            note(f"encrypted {report.files} tables with {CBC_MODE} into {cbc} in {time.perf_counter() - started:.1f} s")
    return Setup(work, plain, gcm, cbc, kms.path, pass_file, data_key, bigdl_pk, bigdl_dk, scale)


def warm_page_cache(folders: Sequence[Path]) -> str:
    """Read every input file once, so no variant runs from a colder page cache than another."""
    files = [p for folder in folders for p in sorted(folder.iterdir()) if p.is_file() and ".tbl" in p.name]
    total = sum(p.stat().st_size for p in files)
    started = time.perf_counter()
    buffer = bytearray(8 << 20)
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    available = (_mem_kib("MemAvailable") or 0) * 1024
    text = (f"read all {len(files)} input files ({total / 1e9:.2f} GB: plaintext, aes_gcm_stream"
            f"{', CBC' if len(folders) > 2 else ''}) once before timing ({time.perf_counter() - started:.1f} s); ")
    if available > 2 * total:
        text += f"{available / 1e9:.1f} GB still available, so every variant reads from the page cache"
    else:
        text += (f"WARNING only {available / 1e9:.1f} GB available: some input may be evicted, and a variant "
                 "read later may hit the disk")
    return text


# ---------------------------------------------------------------------------------------------------
# Spark


def make_session(master: str):
    from pyspark.sql import SparkSession

    from ppml.spark import secure_session

    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (SparkSession.builder.master(master).appName("ppml-bench-tpch")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "8"))
    if master.startswith("local"):
        builder = builder.config("spark.driver.memory", "4g")
    spark = secure_session(builder)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def ppml_tables_no_pushdown(ctx, input_dir: str, crypto_mode: str, *, scale: float | None):
    """As :func:`ppml.tpch.runner.ppml_tables` with pruning on, plus ``filterPushdown=false`` on every read."""
    from ppml.tpch.schema import spark_schema
    from ppml.tpch.tables import Tables

    def load(table: str, columns):
        reader = (ctx.read(crypto_mode).option("sep", "|").option("quote", "").option("filterPushdown", False)
                  .schema(spark_schema(table)))
        if columns is not None:
            reader = reader.columns(*columns)
        return reader.csv(f"{input_dir.rstrip('/')}/{table}.tbl*")

    return Tables(loader=load, scale=scale)


@dataclass
class Variant:
    """One way of running a query: a context, a tables factory, an output mode and folder."""

    name: str
    ctx: object
    tables: Callable[[], object]      # a fresh Tables
    output_mode: str
    out_dir: Path
    spark_writer: bool = False
    # Hand each query its tables narrowed to COLUMNS_USED, so ppml_tables' pruning takes effect whatever
    # run_queries does (until 2026-11-30 05:48 run_queries did not narrow, and pruning was silently off).
    narrow: bool = True


@dataclass
class Timing:
    query: str
    rows: int
    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)


class Mismatch(RuntimeError):
    pass


def run_one(variant: Variant, number: int, oracle, repeat: int) -> Timing:
    """``repeat`` timed runs of query ``number`` through :func:`run_queries`; checked against the oracle once."""
    from ppml.tpch.queries import COLUMNS_USED
    from ppml.tpch.runner import run_queries

    timing = None
    for attempt in range(repeat):
        tables = variant.tables()
        if variant.narrow:
            tables = tables.narrowed(COLUMNS_USED[number])
        [run] = run_queries(variant.ctx, tables, str(variant.out_dir), variant.output_mode, [number],
                            oracle=oracle if attempt == 0 else None, spark_writer=variant.spark_writer)
        if run.mismatches and variant.spark_writer:
            run.mismatches = _recheck_trimmed(variant, number, tables, oracle)
        if run.mismatches:
            for line in run.mismatches[:10]:
                print(f"MISMATCH [{variant.name}] {line}", file=sys.stderr)
            raise Mismatch(f"{variant.name}: {run.query} differs from the DuckDB oracle "
                           f"({len(run.mismatches)} mismatch(es))")
        if timing is None:
            timing = Timing(run.query, run.rows)
        timing.seconds.append(run.seconds)
    assert timing is not None
    return timing


def _strip(rows):
    return [tuple(v.strip() if isinstance(v, str) else v for v in row) for row in rows]


def _recheck_trimmed(variant: Variant, number: int, tables, oracle) -> list[str]:
    """Compare the plaintext baseline again with leading/trailing blanks of strings ignored on both sides.

    Spark's CSV *writer* trims leading and trailing white space by default (``ignoreLeadingWhiteSpace`` and
    ``ignoreTrailingWhiteSpace`` default to true on write), so dbgen comments and addresses that start or end
    with a blank come back shorter from the baseline's output: that is the baseline's writer, not its query.
    Likewise a one-column row holding null is written as an empty line, which Spark's CSV reader skips (Q17
    at small scales, whose answer is one null), so such rows are left out of the expectation.
    """
    from ppml.tpch.comparison import compare
    from ppml.tpch.queries import run_query
    from ppml.tpch.spec import query_label

    schema = run_query(number, tables).schema
    target = f"{str(variant.out_dir).rstrip('/')}/{query_label(number)}"
    back = variant.ctx.spark.read.option("header", True).schema(schema).csv(target).collect()
    expected = _strip(oracle.answer(number))
    if len(schema.fields) == 1:
        expected = [row for row in expected if row[0] is not None]
    return compare(number, _strip(tuple(r) for r in back), expected)


def run_side_by_side(variants: Sequence[Variant], numbers: Sequence[int], oracle, repeat: int,
                     label: str) -> dict[str, dict[int, Timing]]:
    """Every query on every variant; the variants' order rotates from one query to the next."""
    results: dict[str, dict[int, Timing]] = {v.name: {} for v in variants}
    for index, number in enumerate(numbers):
        shift = index % len(variants)
        for variant in list(variants[shift:]) + list(variants[:shift]):
            timing = run_one(variant, number, oracle, repeat)
            results[variant.name][number] = timing
            note(f"{label} Q{number:02d} {variant.name:<24} {timing.best:7.2f} s  ({timing.rows} rows, "
                 f"load {load_average()})")
    return results


def input_tasks(tables, table: str = "lineitem") -> int:
    return tables[table].rdd.getNumPartitions()


# ---------------------------------------------------------------------------------------------------
# write cost


def measure_writes(spark, ctxs: dict[str, object], setup: Setup, repeat: int, table: str) -> dict[str, object]:
    """Write ``table`` from one cached DataFrame with Spark's CSV writer and ppml's writer(s), alternating."""
    from ppml.tpch.tables import tbl_tables

    df = tbl_tables(spark, setup.plain, scale=setup.scale)[table].cache()
    rows = df.count()
    partitions = df.rdd.getNumPartitions()
    out = setup.work / "results" / "write"
    legs: list[tuple[str, Callable[[Path], None]]] = [
        ("spark CSV (plaintext)", lambda p: df.write.mode("overwrite").option("header", True).csv(str(p))),
        ("ppml aes_gcm_stream", lambda p: ctxs[GCM].write(df, "aes_gcm_stream").mode("overwrite")
         .option("header", True).csv(str(p))),
    ]
    if CBC in ctxs:
        legs.append(("ppml aes/cbc/pkcs5padding", lambda p: ctxs[CBC].write(df, CBC_MODE).mode("overwrite")
                     .option("header", True).csv(str(p))))
    seconds: dict[str, list[float]] = {name: [] for name, _ in legs}
    sizes: dict[str, int] = {}
    # untimed warm-up of each writer on a small slice
    for index, (name, write) in enumerate(legs):
        target = out / f"warmup-{index}"
        shutil.rmtree(target, ignore_errors=True)
        if name.startswith("spark"):
            df.limit(1000).write.mode("overwrite").option("header", True).csv(str(target))
        else:
            ctx, mode = (ctxs[GCM], "aes_gcm_stream") if "gcm" in name else (ctxs[CBC], CBC_MODE)
            ctx.write(df.limit(1000), mode).mode("overwrite").csv(str(target))
        shutil.rmtree(target, ignore_errors=True)
    for attempt in range(repeat):
        order = legs if attempt % 2 == 0 else list(reversed(legs))
        for name, write in order:
            target = out / name.split()[1].replace("/", "_")
            shutil.rmtree(target, ignore_errors=True)
            os.sync()
            started = time.perf_counter()
            write(target)
            seconds[name].append(time.perf_counter() - started)
            sizes[name] = sum(p.stat().st_size for p in target.iterdir() if p.name.startswith("part-"))
            note(f"write {table} {name:<28} {seconds[name][-1]:7.2f} s (load {load_average()})")
    # the encrypted copy must read back whole
    back = ctxs[GCM].read("aes_gcm_stream").option("header", True).schema(df.schema).csv(
        str(out / "aes_gcm_stream")).count()
    if back != rows:
        raise Mismatch(f"the aes_gcm_stream write of {table} reads back {back} rows, not {rows}")
    df.unpersist()
    return {"table": table, "rows": rows, "partitions": partitions, "seconds": seconds, "bytes": sizes}


# ---------------------------------------------------------------------------------------------------
# report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def query_table(results: dict[str, dict[int, Timing]], numbers: Sequence[int]) -> list[str]:
    has_cbc = CBC in results
    head = "| query | rows | plaintext s | aes_gcm_stream s | ratio |" + (" cbc s | ratio |" if has_cbc else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    totals = {name: 0.0 for name in results}
    for n in numbers:
        p, g = results[PLAIN][n], results[GCM][n]
        cells = [p.query, f"{g.rows:,}", f"{p.best:.2f}", f"{g.best:.2f}", _ratio(g.best, p.best)]
        if has_cbc:
            c = results[CBC][n]
            cells += [f"{c.best:.2f}", _ratio(c.best, p.best)]
        for name in results:
            totals[name] += results[name][n].best
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**total**", "", f"**{totals[PLAIN]:.2f}**", f"**{totals[GCM]:.2f}**",
             f"**{_ratio(totals[GCM], totals[PLAIN])}**"]
    if has_cbc:
        cells += [f"**{totals[CBC]:.2f}**", f"**{_ratio(totals[CBC], totals[PLAIN])}**"]
    lines.append("| " + " | ".join(cells) + " |")
    return lines


ABLATION_LABELS = {
    "pruned+pushdown": "pruning + pushdown (as in the main table)",
    "no-prune": "pruning off (`ppml_tables(prune=False)`)",
    "no-pushdown": "pushdown off (`filterPushdown=false`)",
    "as-shipped": "`run_queries(ppml_tables(...))` alone (no narrowing by the benchmark)",
}


def ablation_table(results: dict[str, dict[int, Timing]], numbers: Sequence[int]) -> list[str]:
    names = list(results)
    head = "| query | " + " | ".join(f"{ABLATION_LABELS[n]} s" for n in names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]
    base = results["pruned+pushdown"]
    totals = {n: 0.0 for n in names}
    for q in numbers:
        cells = [base[q].query]
        for n in names:
            t = results[n][q].best
            totals[n] += t
            cells.append(f"{t:.2f}" + ("" if n == "pruned+pushdown" else f" ({_ratio(t, base[q].best)}×)"))
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**total**"] + [f"**{totals[n]:.2f}**" + ("" if n == "pruned+pushdown" else
                                                      f" ({_ratio(totals[n], totals['pruned+pushdown'])}×)")
                             for n in names]
    lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_table(writes: dict[str, object]) -> list[str]:
    seconds: dict[str, list[float]] = writes["seconds"]  # type: ignore[assignment]
    sizes: dict[str, int] = writes["bytes"]  # type: ignore[assignment]
    base = min(seconds["spark CSV (plaintext)"])
    lines = ["| writer | seconds (best) | all runs | MB written | ratio to Spark CSV |", "|---|---|---|---|---|"]
    for name, runs in seconds.items():
        lines.append(f"| {name} | {min(runs):.2f} | {', '.join(f'{s:.2f}' for s in runs)} | "
                     f"{sizes.get(name, 0) / 1e6:,.0f} | {_ratio(min(runs), base)} |")
    return lines


# ---------------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="TPC-H scale factor (default 1)")
    parser.add_argument("--queries", default=None, help="comma-separated query numbers (default: all 22)")
    parser.add_argument("--ablation-queries", default="1,6,12,14",
                        help="queries for the pruning/pushdown table (default 1,6,12,14; 'none' to skip)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for data, keys and results (default benchmarks/_data/tpch-sfS)")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    parser.add_argument("--skip-cbc", action="store_true", help="leave out BigDL's CBC variant")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of everything; the best counts")
    parser.add_argument("--warmup-query", type=int, default=11, help="untimed query per variant (default 11)")
    parser.add_argument("--write-table", default="lineitem", help="table for the write test (default lineitem)")
    parser.add_argument("--json", type=Path, default=None, help="also write all numbers here as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from ppml.keys.settings import KeySettings
    from ppml.spark import PPMLContext
    from ppml.tpch.oracle import Oracle
    from ppml.tpch.runner import ppml_tables, spark_csv_tables
    from ppml.tpch.spec import parse_query_numbers

    numbers = parse_query_numbers(args.queries.split(",") if args.queries else None)
    ablation = ([] if args.ablation_queries.lower() == "none"
                else parse_query_numbers(args.ablation_queries.split(",")))
    work = (args.workdir or DEFAULT_WORKDIR / f"tpch-sf{args.scale:g}").resolve()
    repeat = max(1, args.repeat)
    load_before = load_average()
    command = " ".join([Path(sys.executable).name, *sys.argv])

    setup = prepare(work, args.scale, with_cbc=not args.skip_cbc)
    note("loading the DuckDB oracle")
    oracle = Oracle(setup.plain, scale=setup.scale)
    folders = [setup.plain, setup.gcm] + ([setup.cbc] if setup.cbc else [])
    cache_note = warm_page_cache(folders)
    note(cache_note)

    spark = make_session(args.master)
    results_dir = work / "results"
    try:
        info = machine_info(spark.version)
        gcm_ctx = PPMLContext(spark, data_key=str(setup.data_key),
                              keys=KeySettings(keystore=str(setup.keystore), passphrase=f"file:{setup.pass_file}"))
        ctxs: dict[str, object] = {GCM: gcm_ctx}
        scale = setup.scale
        variants = [
            Variant(PLAIN, gcm_ctx, lambda: spark_csv_tables(spark, setup.plain, scale=scale), "plain_text",
                    results_dir / PLAIN, spark_writer=True),
            Variant(GCM, gcm_ctx, lambda: ppml_tables(gcm_ctx, str(setup.gcm), "aes_gcm_stream", scale=scale),
                    "aes_gcm_stream", results_dir / GCM),
        ]
        if setup.cbc is not None:
            cbc_ctx = PPMLContext(spark, data_key=str(setup.bigdl_data_key),
                                  keys=KeySettings(bigdl_kms="plaintext", bigdl_primary_key=f"file:{setup.bigdl_pk}"))
            ctxs[CBC] = cbc_ctx
            variants.append(Variant(CBC, cbc_ctx, lambda: ppml_tables(cbc_ctx, str(setup.cbc), CBC_MODE, scale=scale),
                                    CBC_MODE, results_dir / CBC))
        tasks = {v.name: input_tasks(v.tables()) for v in variants}
        note("input tasks for lineitem: " + ", ".join(f"{k} {v}" for k, v in tasks.items()))

        note(f"warm-up: Q{args.warmup_query:02d} once per variant, untimed")
        for variant in variants:
            run_one(variant, args.warmup_query, oracle, 1)

        main_results = run_side_by_side(variants, numbers, oracle, repeat, "main")

        ablation_results: dict[str, dict[int, Timing]] = {}
        if ablation:
            gcm_dir = str(setup.gcm)
            ab_variants = [
                Variant("pruned+pushdown", gcm_ctx,
                        lambda: ppml_tables(gcm_ctx, gcm_dir, "aes_gcm_stream", scale=scale),
                        "aes_gcm_stream", results_dir / "ablation-base"),
                Variant("no-prune", gcm_ctx,
                        lambda: ppml_tables(gcm_ctx, gcm_dir, "aes_gcm_stream", scale=scale, prune=False),
                        "aes_gcm_stream", results_dir / "ablation-no-prune"),
                Variant("no-pushdown", gcm_ctx,
                        lambda: ppml_tables_no_pushdown(gcm_ctx, gcm_dir, "aes_gcm_stream", scale=scale),
                        "aes_gcm_stream", results_dir / "ablation-no-pushdown"),
                Variant("as-shipped", gcm_ctx,
                        lambda: ppml_tables(gcm_ctx, gcm_dir, "aes_gcm_stream", scale=scale),
                        "aes_gcm_stream", results_dir / "ablation-as-shipped", narrow=False),
            ]
            ablation_results = run_side_by_side(ab_variants, ablation, oracle, repeat, "ablation")

        writes = measure_writes(spark, ctxs, setup, repeat, args.write_table)
    finally:
        spark.stop()
        oracle.close()
    load_after = load_average()

    # ---- report -------------------------------------------------------------------------------------
    say(f"## TPC-H scale {args.scale:g}: plaintext Spark vs ppml on encrypted tables")
    say()
    say(f"- command: `{command}`")
    say(f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, {info['os']}")
    say(f"- versions: Python {info['python']}, Spark {info['spark']} (pyspark {info['pyspark']}), {info['java']}, "
        f"pyarrow {info['pyarrow']}, duckdb {info['duckdb']}, cryptography {info['cryptography']}")
    say(f"- session: master {args.master}, driver memory 4g, spark.sql.shuffle.partitions 8, ppml secure "
        "defaults (spark.io.encryption.enabled etc.), one session for all variants")
    say(f"- load average (1, 5, 15 min): before {load_before}; after {load_after}")
    say(f"- page cache: {cache_note}")
    say(f"- warm-up: Q{args.warmup_query:02d} once per variant, untimed; variant order rotates per query; "
        f"best of {repeat} run(s) per cell")
    say("- input tasks for lineitem: " + ", ".join(f"{k} {v}" for k, v in tasks.items())
        + (" (a CBC file is one task: lineitem is read by one core)" if CBC in tasks else ""))
    say("- every answer of every variant matched the DuckDB oracle (the plaintext baseline's up to leading and "
        "trailing blanks in strings: Spark's CSV writer trims them by default)")
    say("- timings include planning, the query and writing the result (plaintext: Spark's CSV writer; "
        "encrypted: ppml's writer in the input's mode); reading back for the check is not timed")
    say()
    say("### Per query (seconds)")
    say()
    for line in query_table(main_results, numbers):
        say(line)
    say()
    if ablation_results:
        say("### What pruning and pushdown buy (aes_gcm_stream, seconds; × = relative to pruning + pushdown)")
        say()
        for line in ablation_table(ablation_results, ablation):
            say(line)
        say()
    say(f"### Write cost: {writes['table']} ({writes['rows']:,} rows, {writes['partitions']} partitions) "
        "from one cached DataFrame")
    say()
    for line in write_table(writes):
        say(line)
    say()

    total_plain = sum(main_results[PLAIN][n].best for n in numbers)
    total_gcm = sum(main_results[GCM][n].best for n in numbers)
    slow = [(main_results[GCM][n].query, main_results[GCM][n].best / main_results[PLAIN][n].best)
            for n in numbers if main_results[GCM][n].best > TARGET_QUERY * main_results[PLAIN][n].best]
    write_ratio = (min(writes["seconds"]["ppml aes_gcm_stream"]) / min(writes["seconds"]["spark CSV (plaintext)"]))
    say("### Targets")
    say()
    say(f"- encrypted total ≤ {TARGET_TOTAL:.1f}× plaintext: {total_gcm / total_plain:.2f} → "
        + ("**met**" if total_gcm <= TARGET_TOTAL * total_plain else "**not met**"))
    say(f"- no query slower than {TARGET_QUERY:.1f}× plaintext: "
        + ("**met**" if not slow else "**not met**: " + ", ".join(f"{q} {r:.2f}×" for q, r in slow)))
    say(f"- encrypted write ≤ {TARGET_WRITE:.1f}× Spark's CSV write: {write_ratio:.2f} → "
        + ("**met**" if write_ratio <= TARGET_WRITE else "**not met**"))

    if args.json:
        args.json.write_text(json.dumps({
            "schema": "ppml.bench-tpch/1", "command": command, "machine": info, "scale": args.scale,
            "load_before": load_before, "load_after": load_after, "page_cache": cache_note, "input_tasks": tasks,
            "main": {v: {n: asdict(t) for n, t in r.items()} for v, r in main_results.items()},
            "ablation": {v: {n: asdict(t) for n, t in r.items()} for v, r in ablation_results.items()},
            "writes": writes,
        }, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Mismatch as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
