"""``ppml tpch``: generate, encrypt and query TPC-H data with Spark, and the end-to-end demo."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ppml.cli._common import ForceOpt, JsonOpt, byte_progress, demo_keys, emit_json, err
from ppml.cli.data import ModeOpt, SegmentOpt
from ppml.cli.options import KubernetesTarget, key_arguments, key_options, kubernetes_options, passphrase_prompt
from ppml.crypto.formats import DEFAULT_FORMAT, PLAINTEXT
from ppml.errors import IntegrityError, UsageError
from ppml.keys.local import PASSWORD_ENV
from ppml.keys.settings import KeySettings

app = typer.Typer(help="TPC-H on encrypted data with Spark: generate, encrypt, run, check.", no_args_is_help=True,
                  rich_markup_mode="markdown")

ConfOpt = Annotated[Optional[list[str]], typer.Option("--conf", help="Spark setting KEY=VALUE (repeatable).")]
MasterOpt = Annotated[str, typer.Option("--master", help="Spark master URL.")]
TABLE_FORMATS = ("csv", "parquet")
FormatOpt = Annotated[str, typer.Option(
    "--format", metavar="FMT", help="Table format: csv (BigDL's .tbl files, encrypted as streams) or parquet "
                                    "(<table>.parquet, encrypted with PME).")]
EngineOpt = Annotated[Optional[str], typer.Option(
    "--parquet-engine", metavar="ENGINE", help="Encrypted Parquet through Spark's own reader and writer (spark) "
                                               "or the ppml data source (pyarrow) [default: spark].")]


def _table_format(value: str, allowed: tuple[str, ...] = TABLE_FORMATS) -> str:
    value = value.strip().lower()
    if value not in allowed:
        raise UsageError(f"--format {value!r} is not one of {', '.join(allowed)}")
    return value


AuthSecretOpt = Annotated[Optional[Path], typer.Option(
    "--auth-secret-file", envvar="PPML_SPARK_AUTH_SECRET_FILE", show_envvar=True,
    help="File with the cluster's spark.authenticate secret (standalone clusters).")]


def _session(master: str, conf: list[str] | None, app_name: str, auth_secret_file: Path | None = None):
    from pyspark.sql import SparkSession

    from ppml.spark import secure_session

    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # nothing leaves the machine in local mode
    builder = SparkSession.builder.appName(app_name)
    # Under spark-submit (ppml submit) the JVM already holds the master and the job's settings: keep them.
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        builder = builder.master(master)
    settings = {"spark.ui.showConsoleProgress": "false", "spark.sql.shuffle.partitions": "8"}
    if master.startswith("local"):
        settings["spark.driver.memory"] = "4g"
    for item in conf or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--conf {item!r} is not KEY=VALUE")
        settings[key.strip()] = value.strip()
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = secure_session(builder, auth_secret_file=str(auth_secret_file) if auth_secret_file else None)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _context(spark, *, data_key: Path | None, keys: KeySettings):
    from ppml.spark import PPMLContext

    return PPMLContext(spark, keys=keys, data_key=str(data_key) if data_key else None)


@app.command()
def gen(
    out: Annotated[Path, typer.Option("--out", help="Folder for the eight <table>.tbl files.")],
    scale: Annotated[float, typer.Option("--scale", help="TPC-H scale factor (1 = about 1 GB).")] = 1.0,
    table_format: FormatOpt = "csv",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate dbgen-compatible TPC-H tables with tpchgen-cli (reused when already there).

    With `--format parquet`, also `<table>.parquet` beside each `.tbl` (snappy, TPC-H's types).

    **Examples**

    * `ppml tpch gen --scale 0.1 --out tpch/plain`
    * `ppml tpch gen --scale 1 --out tpch/plain --format parquet`
    """
    from ppml.tpch.gen import generate

    table_format = _table_format(table_format)
    started = time.perf_counter()
    paths = generate(scale, out, force=force)
    if table_format == "parquet":
        from ppml.tpch.parquet import write_plain_parquet

        paths = write_plain_parquet(out, force=force)
    sizes = {t: p.stat().st_size for t, p in paths.items()}
    if as_json:
        emit_json("tpch.gen", {"scale": scale, "out": str(out), "bytes": sizes})
        return
    err.print(f"TPC-H scale {scale:g} in {out}: {sum(sizes.values()) / 1e6:,.0f} MB "
              f"({time.perf_counter() - started:.1f} s).")


@app.command("encrypt")
@key_options
def encrypt_cmd(
    src: Annotated[str, typer.Argument(help="Folder with the eight <table>.tbl files.")],
    dst: Annotated[str, typer.Argument(help="Folder for the encrypted tables.")],
    keys: KeySettings,
    data_key: Annotated[Path, typer.Option("--data-key", metavar="FILE", help="Data-key file.")],
    mode: ModeOpt = None,
    segment: SegmentOpt = None,
    table_format: FormatOpt = "csv",
    footer_key: Annotated[Optional[str], typer.Option(
        "--footer-key", metavar="KEY", help="Parquet: master key of the footer and of columns no --column-key "
                                            "names [default: the data key's master key].")] = None,
    column_key: Annotated[Optional[list[str]], typer.Option(
        "--column-key", metavar="KEY:COLS", help="Parquet: master key of columns, KEY:col[,col...] "
                                                 "(repeatable; each table takes the columns it has).")] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Encrypt all eight tables (`lineitem.tbl` → `lineitem.tbl.ppml`, ...).

    With `--format parquet`: `<table>.parquet` into one encrypted Parquet data set (PME, every column
    encrypted, AES_GCM_V1, encrypted footer), its manifest under the data key.

    **Examples**

    * `ppml tpch encrypt tpch/plain tpch/enc --data-key dk.json`
    * `ppml tpch encrypt tpch/plain tpch/pme --data-key dk.json --format parquet --column-key pii:c_phone,c_address`
    """
    from ppml.io.storage import locate

    if _table_format(table_format) == "parquet":
        _encrypt_parquet(src, dst, keys, data_key, mode, footer_key, column_key, force, as_json)
        return
    from ppml.io.encryption import prepare_encryption
    from ppml.tpch.runner import encrypt_tables

    encryption = prepare_encryption(data_key, keys, mode=mode, segment=segment, prompt=passphrase_prompt())
    total = sum(size for _, size in locate(src).files())
    with byte_progress("encrypting tables", total) as advance:
        report = encrypt_tables(src, dst, encryption, force=force, progress=advance)
    if as_json:
        emit_json("tpch.encrypt", report.to_json())
        return
    err.print(f"Encrypted {report.files} tables ({report.bytes / 1e6:,.0f} MB) into {dst} in {report.seconds:.1f} s.")


def _encrypt_parquet(src: str, dst: str, keys: KeySettings, data_key: Path, mode: str | None,
                     footer_key: str | None, column_key: list[str] | None, force: bool, as_json: bool) -> None:
    from ppml.io.storage import locate
    from ppml.keys.datakey_file import DataKeyFile
    from ppml.parquet.masterkeys import master_key_of
    from ppml.parquet.settings import ALGORITHMS, ParquetEncryption, parse_column_keys
    from ppml.tpch.parquet import encrypt_tables
    from ppml.tpch.schema import TABLE_NAMES

    algorithm = (mode or "AES_GCM_V1").strip().upper()
    if algorithm.lower() not in ALGORITHMS:
        raise UsageError(f"--mode {mode!r} is not a Parquet encryption algorithm",
                         hint="use AES_GCM_V1 (default) or AES_GCM_CTR_V1")
    footer = footer_key or master_key_of(keys, DataKeyFile.load(data_key).envelope)
    encryption = ParquetEncryption(footer_key=footer, column_keys=parse_column_keys(column_key or []),
                                   algorithm=algorithm)
    total = sum(size for relative, size in locate(src).files() if relative in {f"{t}.parquet" for t in TABLE_NAMES})
    with byte_progress("encrypting tables", total) as advance:
        report = encrypt_tables(src, dst, keys=keys, encryption=encryption, data_key=str(data_key), force=force,
                                progress=advance)
    if as_json:
        emit_json("tpch.encrypt", report.to_json())
        return
    err.print(f"Encrypted {report.files} Parquet tables into {dst} in {report.seconds:.1f} s "
              f"(footer key {footer}).")


def _oracle_for(input_dir: str, input_mode: str, ring, plaintext: Path | None, scale: float | None):
    """The DuckDB oracle over the plaintext tables (decrypted in memory when only the encrypted are given)."""
    from ppml.tpch.oracle import Oracle
    from ppml.tpch.runner import decrypted_oracle

    if plaintext is not None:
        return Oracle(plaintext, scale=scale)
    if input_mode == PLAINTEXT:
        return Oracle(input_dir, scale=scale)
    return decrypted_oracle(input_dir, ring, scale=scale)


def _print_runs(runs, baseline=None, *, title: str = "TPC-H") -> None:
    table = Table(title=title, show_lines=False)
    table.add_column("query")
    table.add_column("rows", justify="right")
    table.add_column("encrypted s" if baseline else "seconds", justify="right")
    if baseline:
        table.add_column("plaintext s", justify="right")
        table.add_column("ratio", justify="right")
    table.add_column("check")
    for index, run in enumerate(runs):
        check = ("ok" if not run.mismatches else f"[red]{len(run.mismatches)} mismatch[/]") if run.checked else "-"
        cells = [run.query, f"{run.rows:,}", f"{run.seconds:.2f}"]
        if baseline:
            base = baseline[index].seconds
            cells += [f"{base:.2f}", f"{run.seconds / base:.2f}" if base else "-"]
        table.add_row(*cells, check)
    total = sum(r.seconds for r in runs)
    cells = ["total", "", f"{total:.2f}"]
    if baseline:
        base_total = sum(r.seconds for r in baseline)
        cells += [f"{base_total:.2f}", f"{total / base_total:.2f}" if base_total else "-"]
    table.add_row(*cells, "")
    err.print(table)


def _report_mismatches(runs) -> None:
    bad = [r for r in runs if r.mismatches]
    for run in bad:
        for line in run.mismatches[:10]:
            err.print(f"[red]mismatch[/] {line}")
    if bad:
        raise IntegrityError(f"{len(bad)} query result(s) differ from the oracle: " + ", ".join(r.query for r in bad),
                             hint="the lines above name query, row and column")


@app.command()
@key_options
@kubernetes_options
def run(
    input_dir: Annotated[str, typer.Argument(help="Folder with <table>.tbl* files.")],
    output_dir: Annotated[str, typer.Argument(help="Folder for Q01..Q22 and TIMES.txt.")],
    input_mode: Annotated[str, typer.Argument(help="Crypto mode of the input.")],
    output_mode: Annotated[str, typer.Argument(help="Crypto mode of the results.")],
    keys: KeySettings,
    kube: KubernetesTarget,
    queries: Annotated[Optional[list[str]], typer.Argument(help="Query numbers (default: all 22).")] = None,
    data_key: Annotated[Optional[Path], typer.Option("--data-key", metavar="FILE",
                                                     help="Data-key file for encrypted results.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Compare every result with the DuckDB oracle.")] = False,
    plaintext: Annotated[Optional[Path], typer.Option(
        "--plaintext", metavar="DIR", help="Plaintext .tbl folder for --check (default: decrypt the input in "
                                           "memory).")] = None,
    master: MasterOpt = "local[*]",
    conf: ConfOpt = None,
    auth_secret_file: AuthSecretOpt = None,
    scale: Annotated[Optional[float], typer.Option(
        "--scale", help="Scale factor of the data (Q11's parameter depends on it) [default: 1, or the one "
                        "recorded by 'ppml tpch gen' next to the plaintext].")] = None,
    no_prune: Annotated[bool, typer.Option("--no-prune", help="Parse every column (to measure pruning).")] = False,
    table_format: FormatOpt = "csv",
    parquet_engine: EngineOpt = None,
    no_warm_up: Annotated[bool, typer.Option(
        "--no-warm-up", help="Start the first query at once (its timing then includes Spark's start-up).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run TPC-H queries (BigDL's argument order) on encrypted tables; results written encrypted.

    With `--format parquet` the input is `<table>.parquet` (PME-encrypted in an encrypted input mode, any of
    aes_gcm_v1, aes_gcm_ctr_v1 or the default; plaintext Parquet in plain_text) and results are written as
    Parquet, PME-encrypted in an encrypted output mode.

    **Examples**

    * `ppml tpch run tpch/enc out aes_gcm_stream aes_gcm_stream --data-key dk.json --check`
    * `ppml tpch run tpch/plain out plain_text plain_text 1 6`
    * `ppml tpch run tpch/pme out aes_gcm_v1 aes_gcm_v1 --format parquet --data-key dk.json --check`
    * `ppml tpch run abfs://data/tpch abfs://data/out aes_gcm_stream aes_gcm_stream --data-key
      /etc/ppml/data-keys/dk.json --master k8s://https://aks-api:443 --deployment deploy/` (through ppml submit,
      in cluster mode: paths are the driver pod's)
    """
    from ppml.crypto.formats import get_format
    from ppml.tpch.gen import read_scale
    from ppml.tpch.runner import Variant, ppml_tables, run_side_by_side, warm_up
    from ppml.tpch.spec import parse_query_numbers

    numbers = parse_query_numbers(queries)
    parquet = _table_format(table_format) == "parquet"
    if parquet:
        input_mode, output_mode = _parquet_mode(input_mode), _parquet_mode(output_mode)
    else:
        input_mode, output_mode = get_format(input_mode).name, get_format(output_mode).name
    if get_format(output_mode).encrypted and data_key is None:
        raise UsageError(f"output mode {output_mode} needs --data-key FILE")
    if parquet_engine is not None and parquet_engine.lower() not in ("spark", "pyarrow"):
        raise UsageError(f"--parquet-engine {parquet_engine!r} is not spark or pyarrow")
    if master.startswith("k8s://"):
        args = [input_dir, output_dir, input_mode, output_mode, *(queries or [])]
        for flag, value in (("--data-key", data_key), ("--plaintext", plaintext), ("--scale", scale),
                            ("--format", table_format), ("--parquet-engine", parquet_engine)):
            args += [flag, str(value)] if value is not None else []
        args += [flag for flag, on in (("--check", check), ("--no-prune", no_prune), ("--no-warm-up", no_warm_up),
                                       ("--json", as_json)) if on]
        _submit_to_kubernetes(master, [*args, *key_arguments(keys)], conf, kube)
        return
    if scale is None:
        scale = read_scale(plaintext or input_dir) if plaintext or "://" not in input_dir else None
    if master.startswith("local"):
        _export_passphrase(keys)
    spark = _session(master, conf, "ppml-tpch", auth_secret_file)
    try:
        ctx = _context(spark, data_key=data_key, keys=keys)
        if parquet:
            from ppml.tpch.parquet import parquet_oracle, parquet_tables

            oracle = parquet_oracle(plaintext or input_dir, keys, input_mode if plaintext is None else PLAINTEXT,
                                    scale=scale) if check else None
            tables = parquet_tables(ctx, input_dir, input_mode, scale=scale, prune=not no_prune,
                                    engine=parquet_engine.lower() if parquet_engine else None)
        else:
            oracle = _oracle_for(input_dir, input_mode, keys.keyring(), plaintext, scale) if check else None
            tables = ppml_tables(ctx, input_dir, input_mode, scale=scale, prune=not no_prune)
        variant = Variant(tables, output_dir, output_mode, oracle=oracle, parquet=parquet)
        with err.status("warming up") as status:
            if not no_warm_up:
                warm_up(ctx, variant)
            [runs] = run_side_by_side(ctx, [variant], numbers,
                                      progress=lambda label: status.update(f"running {label}"))
    finally:
        spark.stop()
    if as_json:
        emit_json("tpch.run", {"queries": [vars(r) for r in runs], "total_seconds": sum(r.seconds for r in runs)})
    else:
        _print_runs(runs)
    _report_mismatches(runs)


def _parquet_mode(mode: str) -> str:
    """A crypto mode for Parquet: plain_text, or a PME algorithm (any other encrypted mode means AES_GCM_V1)."""
    from ppml.crypto.formats import get_format
    from ppml.parquet.settings import ALGORITHMS

    lowered = mode.strip().lower()
    if lowered in ALGORITHMS:
        return lowered
    return PLAINTEXT if not get_format(mode).encrypted else "aes_gcm_v1"


def _submit_to_kubernetes(master: str, args: list[str], conf: list[str] | None, kube: KubernetesTarget) -> None:
    """The run as a Spark application on Kubernetes, through ppml submit (cluster mode: the driver is a pod)."""
    from ppml.cli.submit import run_request, submit_request
    from ppml.deploy.submit import PPML_APP

    request = submit_request(master, PPML_APP, ["tpch", "run", *args], keys=KeySettings(), kube=kube,
                             deploy_mode="cluster", name="ppml-tpch", conf=tuple(conf or ()))
    run_request(request, dry_run=kube.dry_run, as_json=False)


def _export_passphrase(keys: KeySettings) -> None:
    """A passphrase typed at the prompt reaches local Spark workers through the environment they inherit."""
    if keys.kms != "local" or keys.passphrase or os.environ.get(PASSWORD_ENV):
        return
    prompt = passphrase_prompt()
    if prompt is not None and keys.primary().exists:
        os.environ[PASSWORD_ENV] = prompt()


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Working folder.")] = Path("demo"),
    scale: Annotated[float, typer.Option("--scale", help="TPC-H scale factor.")] = 0.1,
    queries: Annotated[Optional[list[str]], typer.Option("--query", "-q", help="Only these queries.")] = None,
    master: MasterOpt = "local[*]",
    table_format: Annotated[str, typer.Option(
        "--format", metavar="FMT", help="csv (BigDL's .tbl files), parquet (PME) or both, side by side.")] = "csv",
    as_json: JsonOpt = False,
) -> None:
    """The main job: TPC-H end to end on encrypted data, checked, and timed against plaintext Spark.

    Generates the tables (scale 0.1 by default), creates a key store and keys, encrypts the tables, runs
    all 22 queries on the encrypted input writing encrypted results, checks every answer with DuckDB,
    runs the same queries on the plaintext with Spark's own reader, and prints both timings side by
    side. With `--format parquet` the tables are Parquet (encrypted with PME, read by Spark's own Parquet
    reader through ppml's key agent; the baseline is Spark on plaintext Parquet); `--format both` runs the
    four variants query by query in one session. Re-running reuses the data, keys and encrypted tables
    already in --dir.

    **Examples**

    * `ppml tpch demo --scale 1 --dir /data/ppml-demo`
    * `ppml tpch demo --format both -q 1 -q 6`
    """
    from ppml.io.encryption import Encryption
    from ppml.tpch.gen import generate
    from ppml.tpch.oracle import Oracle
    from ppml.tpch.runner import Variant, encrypt_tables, ppml_tables, run_side_by_side, spark_csv_tables, warm_up
    from ppml.tpch.spec import parse_query_numbers

    formats = ["csv", "parquet"] if table_format.strip().lower() == "both" else [_table_format(table_format)]
    numbers = parse_query_numbers(queries)
    directory = directory.resolve()
    work = directory / f"tpch-sf{scale:g}"
    say = (lambda text: None) if as_json else (lambda text: err.print(f"[bold cyan]>[/] {text}"))

    say(f"Generating TPC-H scale {scale:g} into {work / 'plain'} (reused if there)")
    generate(scale, work / "plain")

    key_file = directory / "tpch-data-key.json"
    keys, record, key = demo_keys(directory, "tpch", key_file, lambda text, **facts: say(text))

    encrypted = work / "encrypted"
    if "csv" in formats and not (encrypted / "lineitem.tbl.ppml").exists():
        total = sum(p.stat().st_size for p in (work / "plain").glob("*.tbl"))
        with byte_progress("encrypting tables", total) as advance:
            report = encrypt_tables(str(work / "plain"), str(encrypted),
                                    Encryption(DEFAULT_FORMAT, key, record.envelope), force=True, progress=advance)
        say(f"Encrypted 8 tables ({report.bytes / 1e6:,.0f} MB) into {encrypted} in {report.seconds:.2f} s")
    elif "csv" in formats:
        say(f"Reusing the encrypted tables in {encrypted}")
    encrypted_parquet = work / "encrypted-parquet"
    if "parquet" in formats:
        _demo_parquet_tables(work, encrypted_parquet, keys, record, key_file, say)

    # Spark's workers read the passphrase themselves: from the environment they inherit, or the demo's file.
    spark = _session(master, None, "ppml-tpch-demo")
    try:
        ctx = _context(spark, data_key=key_file, keys=keys)
        oracle = Oracle(work / "plain")
        variants: list = []
        if "csv" in formats:
            variants += [
                Variant(ppml_tables(ctx, str(encrypted), DEFAULT_FORMAT, scale=scale), str(work / "results-encrypted"),
                        DEFAULT_FORMAT, oracle=oracle, label="CSV, encrypted input, encrypted output:"),
                Variant(spark_csv_tables(spark, work / "plain", scale=scale), str(work / "results-plaintext"),
                        PLAINTEXT, spark_writer=True, label="CSV, plaintext with Spark's reader:"),
            ]
        if "parquet" in formats:
            from ppml.tpch.parquet import parquet_tables, spark_parquet_tables

            variants += [
                Variant(parquet_tables(ctx, str(encrypted_parquet), "aes_gcm_v1", scale=scale),
                        str(work / "results-parquet-encrypted"), "aes_gcm_v1", oracle=oracle, parquet=True,
                        label="Parquet, encrypted input, encrypted output:"),
                Variant(spark_parquet_tables(spark, work / "plain", scale=scale),
                        str(work / "results-parquet-plaintext"), PLAINTEXT, spark_writer=True, parquet=True,
                        label="Parquet, plaintext with Spark's reader:"),
            ]
        started = time.perf_counter()
        with err.status("warming up") as status:
            warm_up(ctx, *variants)
            runs = run_side_by_side(ctx, variants, numbers, progress=lambda label: status.update(f"running {label}"))
        elapsed = time.perf_counter() - started
    finally:
        spark.stop()
    by_format = {fmt: {"encrypted": runs[2 * i], "plaintext": runs[2 * i + 1]} for i, fmt in enumerate(formats)}
    encrypted_runs = [r for pair in by_format.values() for r in pair["encrypted"]]
    ok = not any(r.mismatches for r in encrypted_runs)
    if as_json:
        first = by_format[formats[0]]
        emit_json("tpch.demo", {"scale": scale, "ok": ok, "encrypted": [vars(r) for r in first["encrypted"]],
                                "plaintext": [vars(r) for r in first["plaintext"]], "seconds": round(elapsed, 2),
                                "formats": {fmt: {side: [vars(r) for r in found] for side, found in pair.items()}
                                            for fmt, pair in by_format.items()}})
    else:
        for fmt, pair in by_format.items():
            _print_runs(pair["encrypted"], pair["plaintext"], title=f"TPC-H on {'Parquet' if fmt == 'parquet' else 'CSV'}")
        say(f"{len(numbers)} queries on encrypted data ({' and '.join(formats)}), encrypted results in {work}; "
            + ("every answer matches the DuckDB oracle." if ok else "SOME ANSWERS DIFFER."))
    _report_mismatches(encrypted_runs)


def _demo_parquet_tables(work: Path, target: Path, keys: KeySettings, record, key_file: Path, say) -> None:
    """Plaintext ``<table>.parquet`` beside the ``.tbl`` files and their PME-encrypted data set (reused)."""
    from ppml.parquet.masterkeys import master_key_of
    from ppml.parquet.settings import ParquetEncryption
    from ppml.tpch.parquet import encrypt_tables as encrypt_parquet
    from ppml.tpch.parquet import write_plain_parquet

    write_plain_parquet(work / "plain")
    if (target / "lineitem.parquet").exists():
        say(f"Reusing the encrypted Parquet tables in {target}")
        return
    footer = master_key_of(keys, record.envelope)
    total = sum(p.stat().st_size for p in (work / "plain").glob("*.parquet"))
    with byte_progress("encrypting Parquet tables", total) as advance:
        report = encrypt_parquet(str(work / "plain"), str(target), keys=keys,
                                 encryption=ParquetEncryption(footer_key=footer), data_key=str(key_file), force=True,
                                 progress=advance)
    say(f"Encrypted 8 Parquet tables with PME (master key {footer}) into {target} in {report.seconds:.2f} s")
