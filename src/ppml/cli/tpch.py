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
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate dbgen-compatible TPC-H tables with tpchgen-cli (reused when already there).

    **Example**: `ppml tpch gen --scale 0.1 --out tpch/plain`
    """
    from ppml.tpch.gen import generate

    started = time.perf_counter()
    paths = generate(scale, out, force=force)
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
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Encrypt all eight tables (`lineitem.tbl` → `lineitem.tbl.ppml`, ...).

    **Example**: `ppml tpch encrypt tpch/plain tpch/enc --data-key dk.json`
    """
    from ppml.io.encryption import prepare_encryption
    from ppml.io.storage import locate
    from ppml.tpch.runner import encrypt_tables

    encryption = prepare_encryption(data_key, keys, mode=mode, segment=segment, prompt=passphrase_prompt())
    total = sum(size for _, size in locate(src).files())
    with byte_progress("encrypting tables", total) as advance:
        report = encrypt_tables(src, dst, encryption, force=force, progress=advance)
    if as_json:
        emit_json("tpch.encrypt", report.to_json())
        return
    err.print(f"Encrypted {report.files} tables ({report.bytes / 1e6:,.0f} MB) into {dst} in {report.seconds:.1f} s.")


def _oracle_for(input_dir: str, input_mode: str, ring, plaintext: Path | None, scale: float | None):
    """The DuckDB oracle over the plaintext tables (decrypted in memory when only the encrypted are given)."""
    from ppml.tpch.oracle import Oracle
    from ppml.tpch.runner import decrypted_oracle

    if plaintext is not None:
        return Oracle(plaintext, scale=scale)
    if input_mode == PLAINTEXT:
        return Oracle(input_dir, scale=scale)
    return decrypted_oracle(input_dir, ring, scale=scale)


def _print_runs(runs, baseline=None) -> None:
    table = Table(title="TPC-H", show_lines=False)
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
    no_warm_up: Annotated[bool, typer.Option(
        "--no-warm-up", help="Start the first query at once (its timing then includes Spark's start-up).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run TPC-H queries (BigDL's argument order) on encrypted tables; results written encrypted.

    **Examples**

    * `ppml tpch run tpch/enc out aes_gcm_stream aes_gcm_stream --data-key dk.json --check`
    * `ppml tpch run tpch/plain out plain_text plain_text 1 6`
    * `ppml tpch run abfs://data/tpch abfs://data/out aes_gcm_stream aes_gcm_stream --data-key
      /etc/ppml/data-keys/dk.json --master k8s://https://aks-api:443 --deployment deploy/` (through ppml submit,
      in cluster mode: paths are the driver pod's)
    """
    from ppml.crypto.formats import get_format
    from ppml.tpch.gen import read_scale
    from ppml.tpch.runner import Variant, ppml_tables, run_side_by_side, warm_up
    from ppml.tpch.spec import parse_query_numbers

    numbers = parse_query_numbers(queries)
    input_mode, output_mode = get_format(input_mode).name, get_format(output_mode).name
    if get_format(output_mode).encrypted and data_key is None:
        raise UsageError(f"output mode {output_mode} needs --data-key FILE")
    if master.startswith("k8s://"):
        args = [input_dir, output_dir, input_mode, output_mode, *(queries or [])]
        for flag, value in (("--data-key", data_key), ("--plaintext", plaintext), ("--scale", scale)):
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
        oracle = _oracle_for(input_dir, input_mode, keys.keyring(), plaintext, scale) if check else None
        variant = Variant(ppml_tables(ctx, input_dir, input_mode, scale=scale, prune=not no_prune), output_dir,
                          output_mode, oracle=oracle)
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
    as_json: JsonOpt = False,
) -> None:
    """The main job: TPC-H end to end on encrypted data, checked, and timed against plaintext Spark.

    Generates the tables (scale 0.1 by default), creates a key store and keys, encrypts the tables, runs
    all 22 queries on the encrypted input writing encrypted results, checks every answer with DuckDB,
    runs the same queries on the plaintext with Spark's own CSV reader, and prints both timings side by
    side. Re-running reuses the data, keys and encrypted tables already in --dir.

    **Example**: `ppml tpch demo --scale 1 --dir /data/ppml-demo`
    """
    from ppml.io.encryption import Encryption
    from ppml.tpch.gen import generate
    from ppml.tpch.oracle import Oracle
    from ppml.tpch.runner import Variant, encrypt_tables, ppml_tables, run_side_by_side, spark_csv_tables, warm_up
    from ppml.tpch.spec import parse_query_numbers

    numbers = parse_query_numbers(queries)
    directory = directory.resolve()
    work = directory / f"tpch-sf{scale:g}"
    say = (lambda text: None) if as_json else (lambda text: err.print(f"[bold cyan]>[/] {text}"))

    say(f"Generating TPC-H scale {scale:g} into {work / 'plain'} (reused if there)")
    generate(scale, work / "plain")

    key_file = directory / "tpch-data-key.json"
    keys, record, key = demo_keys(directory, "tpch", key_file, lambda text, **facts: say(text))

    encrypted = work / "encrypted"
    if not (encrypted / "lineitem.tbl.ppml").exists():
        total = sum(p.stat().st_size for p in (work / "plain").glob("*.tbl"))
        with byte_progress("encrypting tables", total) as advance:
            report = encrypt_tables(str(work / "plain"), str(encrypted),
                                    Encryption(DEFAULT_FORMAT, key, record.envelope), force=True, progress=advance)
        say(f"Encrypted 8 tables ({report.bytes / 1e6:,.0f} MB) into {encrypted} in {report.seconds:.2f} s")
    else:
        say(f"Reusing the encrypted tables in {encrypted}")

    # Spark's workers read the passphrase themselves: from the environment they inherit, or the demo's file.
    spark = _session(master, None, "ppml-tpch-demo")
    try:
        ctx = _context(spark, data_key=key_file, keys=keys)
        variants = [
            Variant(ppml_tables(ctx, str(encrypted), DEFAULT_FORMAT, scale=scale), str(work / "results-encrypted"),
                    DEFAULT_FORMAT, oracle=Oracle(work / "plain"), label="encrypted input, encrypted output:"),
            Variant(spark_csv_tables(spark, work / "plain", scale=scale), str(work / "results-plaintext"),
                    PLAINTEXT, spark_writer=True, label="plaintext with Spark's CSV reader:"),
        ]
        started = time.perf_counter()
        with err.status("warming up") as status:
            warm_up(ctx, *variants)
            encrypted_runs, plain_runs = run_side_by_side(ctx, variants, numbers,
                                                          progress=lambda label: status.update(f"running {label}"))
        elapsed = time.perf_counter() - started
    finally:
        spark.stop()
    ok = not any(r.mismatches for r in encrypted_runs)
    if as_json:
        emit_json("tpch.demo", {"scale": scale, "ok": ok, "encrypted": [vars(r) for r in encrypted_runs],
                                "plaintext": [vars(r) for r in plain_runs], "seconds": round(elapsed, 2)})
    else:
        _print_runs(encrypted_runs, plain_runs)
        say(f"{len(encrypted_runs)} queries on encrypted data, encrypted results in {work / 'results-encrypted'}; "
            + ("every answer matches the DuckDB oracle." if ok else "SOME ANSWERS DIFFER."))
    _report_mismatches(encrypted_runs)
