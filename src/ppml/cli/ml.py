"""``ppml ml``: train on encrypted data, score with encrypted models, inspect model files, and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ppml.cli._common import ForceOpt, JsonOpt, emit_json, err, out
from ppml.cli.options import key_options
from ppml.cli.tpch import ConfOpt, _session
from ppml.keys.settings import KeySettings

app = typer.Typer(help="Machine learning on encrypted data: train, score, inspect models, demo.",
                  no_args_is_help=True, rich_markup_mode="markdown")

DataArg = Annotated[list[str], typer.Argument(metavar="DATA...",
                                              help="Encrypted data files or folders (local paths or URLs).")]
DataKeyOpt = Annotated[Path, typer.Option("--data-key", metavar="FILE",
                                          help="Data-key file to encrypt the output.")]
FormatOpt = Annotated[str, typer.Option("--format", metavar="FMT",
                                        help="Data format: csv, json (JSON lines), parquet.")]
HeaderOpt = Annotated[bool, typer.Option("--header/--no-header", help="CSV files start with a header line.")]
SepOpt = Annotated[str, typer.Option("--sep", metavar="CHAR", help="CSV field separator.")]
MasterOpt = Annotated[str, typer.Option("--master", help="Spark master URL, for Spark estimators and models.")]
TrustOpt = Annotated[Optional[list[str]], typer.Option(
    "--trust", metavar="CLASS", help="Load this class too (repeatable): a scikit-learn type or Spark stage outside "
                                     "the libraries' own.")]


def _spec(data: list[str], fmt: str, header: bool, sep: str):
    from ppml.errors import UsageError
    from ppml.ml.data import FORMATS
    from ppml.ml.jobs import DataSpec

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    return DataSpec(tuple(data), fmt, header, sep)


def _metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()) or "not measured"


@app.command()
@key_options
def train(
    data: DataArg,
    keys: KeySettings,
    estimator: Annotated[str, typer.Option("--estimator", "-e", metavar="NAME",
                                           help="Estimator name ('ppml ml estimators' lists them).")],
    label: Annotated[str, typer.Option("--label", metavar="COLUMN", help="The label column.")],
    model_out: Annotated[str, typer.Option("--out", "-o", metavar="MODEL", help="Encrypted model file to write.")],
    data_key: DataKeyOpt,
    features: Annotated[Optional[str], typer.Option(
        "--features", metavar="A,B,...", help="Feature columns [default: every column but the label].")] = None,
    param: Annotated[Optional[list[str]], typer.Option(
        "--param", "-p", metavar="KEY=VALUE", help="Estimator parameter, its library's name (repeatable).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the estimator and the held-out split.")] = 42,
    test_fraction: Annotated[float, typer.Option(
        "--test-fraction", metavar="F", help="Share of rows held out to measure the model (0: measure on all).")] = 0.2,
    fmt: FormatOpt = "csv",
    header: HeaderOpt = True,
    sep: SepOpt = ",",
    master: MasterOpt = "local[*]",
    conf: ConfOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a named estimator on an encrypted data set; save the model encrypted.

    Features are numeric columns. The model file records the feature schema, the label, the input files'
    ids, the parameters and the key ids (never a key). Spark estimators (spark:...) run on Spark; the
    others in this process.

    **Examples**

    * `ppml ml train enc/train --label target -e xgboost:classifier -o m.ppml --data-key dk.json`
    * `ppml ml train enc/lineitem -e spark:logistic-regression --label late -o lr.ppml --data-key dk.json
      --param maxIter=20`
    * `ppml ml train enc/x.parquet.ppml --format parquet --label y -e lightgbm:regressor -o m.ppml
      --data-key dk.json --json`
    """
    from ppml.ml.estimators import estimator as named
    from ppml.ml.estimators import parse_params
    from ppml.ml.jobs import train as run

    chosen = named(estimator)
    spark = _session(master, conf, "ppml-ml-train") if chosen.engine == "spark" else None
    result = run(_spec(data, fmt, header, sep), estimator=chosen, label=label, out=model_out, data_key=data_key,
                 keys=keys, features=[f.strip() for f in features.split(",")] if features else None,
                 params=parse_params(param or []), seed=seed, test_fraction=test_fraction, spark=spark, force=force)
    if as_json:
        emit_json("ml.train", result.to_json())
        return
    err.print(f"Trained {chosen.name} on {result.rows['train']:,} rows in {result.seconds['fit']:.2f} s; "
              f"held-out {result.rows['test']:,} rows: {_metrics_text(result.metrics)}.")
    err.print(f"Saved the encrypted model to {model_out} (digest {result.info.digest[:16]}…) "
              f"in {result.seconds['total']:.2f} s all told.")


@app.command()
@key_options
def score(
    model: Annotated[str, typer.Argument(help="Encrypted model file.")],
    data: DataArg,
    keys: KeySettings,
    output: Annotated[str, typer.Option("--out", "-o", metavar="DIR", help="Folder for the encrypted predictions.")],
    data_key: DataKeyOpt,
    fmt: FormatOpt = "csv",
    header: HeaderOpt = True,
    sep: SepOpt = ",",
    trust: TrustOpt = None,
    master: MasterOpt = "local[*]",
    conf: ConfOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Score an encrypted data set with an encrypted model into encrypted predictions.

    The data must have the model's feature columns (numbers for numbers); the output has the data's
    columns, `prediction` and the class probabilities, as encrypted CSV parts. When the data has the
    label column, the predictions' quality is reported.

    **Examples**

    * `ppml ml score m.ppml enc/new -o enc/scores --data-key dk.json`
    * `ppml ml score lr.ppml enc/lineitem -o enc/lr-scores --data-key dk.json --master local[2]`
    * `ppml ml score m.ppml enc/test -o enc/scores --data-key dk.json --force --json`
    """
    from ppml.ml.jobs import score as run

    result = run(model, _spec(data, fmt, header, sep), out=output, data_key=data_key, keys=keys,
                 spark=lambda: _session(master, conf, "ppml-ml-score"), force=force, trusted=trust or [])
    if as_json:
        emit_json("ml.score", result.to_json())
        return
    rows = f"{result.rows:,} rows" if result.rows is not None else "the data"
    err.print(f"Scored {rows} into {output} (encrypted) in {result.seconds['total']:.2f} s.")
    if result.metrics:
        err.print(f"Against the label column: {_metrics_text(result.metrics)}.")


@app.command()
@key_options
def inspect(
    model: Annotated[str, typer.Argument(help="Encrypted model file.")],
    keys: KeySettings,
    as_json: JsonOpt = False,
) -> None:
    """Show a model file's authenticated manifest: library, format, features, label, provenance.

    The manifest is encrypted with the model, so its key is needed ('ppml inspect FILE' shows the file's
    header without a key).

    **Examples**

    * `ppml ml inspect model.ppml`
    * `ppml ml inspect model.ppml --json | jq .provenance`
    """
    from ppml.ml.models import inspect as read

    info = read(model, keys=keys)
    if as_json:
        emit_json("ml.inspect", info.to_json())
        return
    table = Table(show_header=False, box=None)
    provenance = info.provenance
    features = ", ".join(f"{c['name']} {c.get('type') or '?'}" for c in info.features) or "-"
    label = info.label
    rows = [("library", f"{info.library} ({info.format})"), ("class", info.model_class),
            ("versions", ", ".join(f"{k} {v}" for k, v in info.manifest.get("versions", {}).items())),
            ("features", features), ("label", f"{label['name']} {label.get('type') or ''}".strip() if label else "-"),
            ("digest", info.digest), ("created", info.manifest.get("created", "-")),
            ("data key", (provenance.get("keys") or {}).get("data_key_id", "-")),
            ("inputs", ", ".join(i["path"] for i in provenance.get("inputs", [])) or "-"),
            ("code sha256", (provenance.get("code") or {}).get("sha256") or "-")]
    for name, value in rows:
        table.add_row(f"[bold]{name}[/]", value)
    out.print(table)


@app.command()
def estimators(as_json: JsonOpt = False) -> None:
    """List the estimator names 'ppml ml train' takes.

    **Example**: `ppml ml estimators`
    """
    from ppml.ml.estimators import ESTIMATORS

    if as_json:
        emit_json("ml.estimators", {"estimators": [{"name": e.name, "class": e.target.replace(":", "."),
                                                    "task": e.task, "engine": e.engine} for e in ESTIMATORS.values()]})
        return
    for e in ESTIMATORS.values():
        out.print(f"{e.name:44} {e.task:15} {e.target.replace(':', '.')}")


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Folder for the demo's keys, data and models.")] = Path(
        "demo-ml"),
    spark: Annotated[bool, typer.Option("--spark/--no-spark", help="Include Spark MLlib.")] = True,
    master: MasterOpt = "local[2]",
    as_json: JsonOpt = False,
) -> None:
    """Train on encrypted and on plaintext data side by side, on a real data set shipped with scikit-learn.

    The data is the Breast Cancer Wisconsin (Diagnostic) set (569 tumours, 30 features). Each estimator is
    trained from the encrypted copy (model saved encrypted) and from the plaintext copy with the same seed;
    the table compares held-out quality and time. Keys are the demo's own, in the folder.

    **Examples**

    * `ppml ml demo`
    * `ppml ml demo --dir /tmp/ml --no-spark --json`
    """
    from ppml.cli._common import demo_keys
    from ppml.ml.demo import compare

    directory.mkdir(parents=True, exist_ok=True)

    def say(text: str, **facts) -> None:
        if not as_json:
            err.print(text)

    keys, _, _ = demo_keys(directory, "ml", directory / "dk.json", say)
    session = (lambda: _session(master, None, "ppml-ml-demo")) if spark else None
    report = compare(directory, keys, directory / "dk.json", spark_session=session, say=say)
    if as_json:
        emit_json("ml.demo", report)
        return
    table = Table(title="Training on encrypted vs plaintext data (held-out 20%)")
    for column in ("estimator", "encrypted", "plaintext", "same", "enc. s", "plain s"):
        table.add_column(column, justify="right" if column.endswith("s") else "left")
    for row in report["rows"]:
        table.add_row(row["estimator"], _metrics_text(row["encrypted"]), _metrics_text(row["plaintext"]),
                      "yes" if row["same_quality"] else "[red]no[/]", f"{row['encrypted_seconds']:.2f}",
                      f"{row['plaintext_seconds']:.2f}")
    out.print(table)
    err.print("Times are read + fit + evaluate; the encrypted runs also saved their models encrypted "
              f"(in {directory / 'models'}). Predictions: {report['score']['output']} (encrypted).")
