#!/usr/bin/env python3
"""Machine learning on encrypted vs plaintext data, side by side in one run: training and batch scoring.

The data: TPC-H ``lineitem`` (tpchgen-cli) turned into a feature table, one row per line item: quantity,
extended price, discount, tax, line number and the days from shipping to the committed date; the label says
whether the item arrived after its commit date. Rows whose order key is divisible by 5 are held out (a rule
every reader applies alike, so both variants train and test on exactly the same rows). The table is written
as CSV part files, then encrypted with ppml (``aes_gcm_stream``, 1 MiB segments).

Two workloads, each on both variants, alternating which goes first from one repeat to the next:

1. **Spark MLlib** ``VectorAssembler`` + ``LogisticRegression`` (``--iterations``): encrypted = ppml's data
   source (``PPMLContext``) reading the encrypted parts and writing encrypted scores; plaintext = Spark's own
   CSV reader and writer on the plaintext parts. Training time is read + fit (Spark reads while it fits);
   scoring is read + transform + write of every row.
2. **XGBoost** (``hist``, ``--trees`` trees, 2 threads) on pandas: encrypted = ``ppml.ml.read_pandas``;
   plaintext = the same pyarrow CSV parser on the plaintext files. Scoring: ``predict_proba`` for every row and
   the scores written as CSV, through ``ppml.open`` or to a plain file.

Model quality (held-out AUC and accuracy) is reported for both variants, with the largest difference between
the two models' coefficients (Spark) or predictions (XGBoost). All inputs are read once before timing, and
``--warmup`` whole repeats run untimed first (JVM JIT, Spark's Python workers, the key, imports).

Usage::

    .venv/bin/python benchmarks/ml.py --scale 0.02 --repeat 1 --warmup 0   # quick check
    .venv/bin/python benchmarks/ml.py --scale 0.5 --repeat 5               # the benchmark: 3 million rows
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import cpu_model, note, say  # noqa: E402

FEATURES = ["quantity", "price", "discount", "tax", "linenumber", "days_to_commit"]
PASSPHRASE = "ml benchmark passphrase"


def make_data(root: Path, scale: float, parts: int) -> tuple[Path, Path, int]:
    """Plaintext and encrypted feature tables; returns their folders and the row count."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as csv

    import ppml
    from ppml.tpch.gen import generate
    from ppml.tpch.tables import read_tbl_arrow

    plain, encrypted = root / "plain", root / "enc"
    if (encrypted / "_rows").exists():
        return plain, encrypted, int((encrypted / "_rows").read_text())
    tables = generate(scale, root / "tpch")
    item = read_tbl_arrow(tables["lineitem"], "lineitem")
    days = pc.days_between(item["l_shipdate"], item["l_commitdate"])
    table = pa.table({"orderkey": item["l_orderkey"], "quantity": pc.cast(item["l_quantity"], pa.float64()),
                      "price": pc.cast(item["l_extendedprice"], pa.float64()),
                      "discount": pc.cast(item["l_discount"], pa.float64()),
                      "tax": pc.cast(item["l_tax"], pa.float64()), "linenumber": item["l_linenumber"],
                      "days_to_commit": days,
                      "late": pc.cast(pc.greater(item["l_receiptdate"], item["l_commitdate"]), pa.int64())})
    shutil.rmtree(plain, ignore_errors=True)
    plain.mkdir(parents=True)
    step = -(-table.num_rows // parts)
    for part in range(parts):
        csv.write_csv(table.slice(part * step, step), plain / f"part-{part:05d}.csv")
    shutil.rmtree(root / "tpch")
    ppml.encrypt(plain, encrypted, data_key=root / "dk.json", keys=_keys(root), force=True)
    (encrypted / "_rows").write_text(str(table.num_rows))
    return plain, encrypted, table.num_rows


def _keys(root: Path):
    import ppml

    return ppml.KeySettings(keystore=str(root / "ks.json"), passphrase=f"file:{root / 'ks.pass'}")


def make_keys(root: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from keystores import make_data_key, make_keystore

    if not (root / "ks.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        kms = make_keystore(root / "ks.json", PASSPHRASE, "default", passphrase_file=root / "ks.pass")
        make_data_key(kms, "default", root / "dk.json")


def spark_run(spark, ctx, variant: str, plain: Path, encrypted: Path, out: Path, iterations: int) -> dict:
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    schema = ("orderkey bigint, quantity double, price double, discount double, tax double, linenumber int, "
              "days_to_commit int, late double")

    def read():
        if variant == "encrypted":
            return ctx.read().option("header", True).schema(schema).csv(str(encrypted))
        return spark.read.option("header", True).schema(schema).csv(str(plain))

    started = time.perf_counter()
    frame = read()
    train = frame.filter(F.col("orderkey") % 5 != 0)
    pipeline = Pipeline(stages=[VectorAssembler(inputCols=FEATURES, outputCol="features"),
                                LogisticRegression(labelCol="late", maxIter=iterations)])
    model = pipeline.fit(train)
    fit_seconds = time.perf_counter() - started
    test = model.transform(read().filter(F.col("orderkey") % 5 == 0))
    auc = BinaryClassificationEvaluator(labelCol="late").evaluate(test)
    accuracy = MulticlassClassificationEvaluator(labelCol="late", metricName="accuracy").evaluate(test)
    started = time.perf_counter()
    scored = model.transform(read()).select("orderkey", "prediction",
                                            vector_to_array("probability")[1].alias("probability"))
    target = out / f"spark-{variant}"
    if variant == "encrypted":
        ctx.write(scored).mode("overwrite").option("header", True).csv(str(target))
    else:
        scored.write.mode("overwrite").option("header", True).csv(str(target))
    score_seconds = time.perf_counter() - started
    coefficients = list(model.stages[-1].coefficients) + [model.stages[-1].intercept]
    return {"fit": fit_seconds, "score": score_seconds, "auc": auc, "accuracy": accuracy, "model": coefficients,
            "fitted": model}


def xgboost_run(variant: str, plain: Path, encrypted: Path, out: Path, root: Path, trees: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as csv
    import xgboost
    from sklearn.metrics import accuracy_score, roc_auc_score

    import ppml

    keys = _keys(root)
    started = time.perf_counter()
    if variant == "encrypted":
        frame = ppml.ml.read_pandas(encrypted, keys=keys)
    else:
        files = sorted(plain.glob("part-*.csv"))
        frame = pa.concat_tables([csv.read_csv(f) for f in files]).to_pandas()
    held_out = (frame["orderkey"] % 5 == 0).to_numpy()
    model = xgboost.XGBClassifier(n_estimators=trees, max_depth=6, tree_method="hist", n_jobs=2, random_state=0)
    model.fit(frame.loc[~held_out, FEATURES], frame.loc[~held_out, "late"])
    fit_seconds = time.perf_counter() - started
    probabilities = model.predict_proba(frame.loc[held_out, FEATURES])[:, 1]
    truth = frame.loc[held_out, "late"].to_numpy()
    auc = roc_auc_score(truth, probabilities)
    accuracy = accuracy_score(truth, probabilities > 0.5)
    started = time.perf_counter()
    scores = pa.table({"orderkey": frame["orderkey"], "probability": model.predict_proba(frame[FEATURES])[:, 1]})
    if variant == "encrypted":
        with ppml.open(out / "xgboost-encrypted.csv.ppml", "wb", data_key=root / "dk.json", keys=keys,
                       force=True) as f:
            csv.write_csv(scores, f)
    else:
        csv.write_csv(scores, out / "xgboost-plaintext.csv")
    score_seconds = time.perf_counter() - started
    return {"fit": fit_seconds, "score": score_seconds, "auc": auc, "accuracy": accuracy,
            "model": np.asarray(scores["probability"]), "fitted": model}


def _warm(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    while handle.read(1 << 24):
                        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.5, help="TPC-H scale (0.5: 3 million rows)")
    parser.add_argument("--dir", type=Path, default=Path("bench-ml"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed repeats first (JIT, caches, workers)")
    parser.add_argument("--parts", type=int, default=4, help="CSV part files")
    parser.add_argument("--iterations", type=int, default=10, help="logistic regression iterations")
    parser.add_argument("--trees", type=int, default=50, help="XGBoost trees")
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()

    import numpy as np
    from pyspark.sql import SparkSession

    import ppml
    from ppml.spark import secure_session

    root = args.dir.resolve()
    make_keys(root)
    plain, encrypted, rows = make_data(root, args.scale, args.parts)
    out = root / "out"
    out.mkdir(exist_ok=True)
    load = os.getloadavg()
    note(f"{rows:,} rows; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    spark = secure_session(SparkSession.builder.master(args.master).appName("ppml-ml-bench")
                           .config("spark.driver.memory", "4g").config("spark.ui.enabled", "false")
                           .config("spark.sql.shuffle.partitions", "8"))
    spark.sparkContext.setLogLevel("ERROR")
    ctx = ppml.PPMLContext(spark, keys=_keys(root), data_key=str(root / "dk.json"))
    _warm(plain, encrypted)
    results: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(-args.warmup, args.repeat):  # negative: untimed warm-up repeats, results dropped
        order = ("encrypted", "plaintext") if repeat % 2 == 0 else ("plaintext", "encrypted")
        for workload in ("spark", "xgboost"):
            for variant in order:
                note(f"repeat {repeat + 1 if repeat >= 0 else 'warm-up'}: {workload} {variant}")
                if workload == "spark":
                    run = spark_run(spark, ctx, variant, plain, encrypted, out, args.iterations)
                else:
                    run = xgboost_run(variant, plain, encrypted, out, root, args.trees)
                if repeat >= 0:
                    results.setdefault((workload, variant), []).append(run)
    saving = time.perf_counter()
    ppml.ml.save(results[("spark", "encrypted")][0]["fitted"], root / "spark-model.ppml",
                 data_key=root / "dk.json", keys=_keys(root), force=True, spark=spark)
    spark_save = time.perf_counter() - saving
    saving = time.perf_counter()
    ppml.ml.save(results[("xgboost", "encrypted")][0]["fitted"], root / "xgboost-model.ppml",
                 data_key=root / "dk.json", keys=_keys(root), force=True)
    xgboost_save = time.perf_counter() - saving
    spark.stop()

    end_load = os.getloadavg()
    say(f"{rows:,} rows (TPC-H scale {args.scale:g} lineitem), {args.parts} CSV parts; {args.warmup} untimed and "
        f"{args.repeat} timed repeat(s), median seconds; {args.master}; CPU {cpu_model()}; load average at start "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, at end "
        f"{end_load[0]:.2f} / {end_load[1]:.2f} / {end_load[2]:.2f}")
    say()
    say("| workload | step | encrypted s | plaintext s | ratio of medians | ratio per repeat |")
    say("|---|---|---:|---:|---:|---|")
    for workload, name in (("spark", f"Spark MLlib logistic regression ({args.iterations} iterations)"),
                           ("xgboost", f"XGBoost hist, {args.trees} trees")):
        for step, label in (("fit", "train (read + fit)"), ("score", "batch score (read + predict + write)")):
            encrypted_runs = [r[step] for r in results[(workload, "encrypted")]]
            plaintext_runs = [r[step] for r in results[(workload, "plaintext")]]
            enc, pla = statistics.median(encrypted_runs), statistics.median(plaintext_runs)
            each = ", ".join(f"{e / p:.2f}" for e, p in zip(encrypted_runs, plaintext_runs, strict=True))
            say(f"| {name} | {label} | {enc:.2f} | {pla:.2f} | {enc / pla:.3f} | {each} |")
    say()
    say("| workload | variant | held-out AUC | held-out accuracy | largest difference from plaintext model |")
    say("|---|---|---:|---:|---:|")
    for workload in ("spark", "xgboost"):
        base = results[(workload, "plaintext")][0]
        for variant in ("encrypted", "plaintext"):
            run = results[(workload, variant)][0]
            difference = float(np.max(np.abs(np.asarray(run["model"]) - np.asarray(base["model"]))))
            say(f"| {workload} | {variant} | {run['auc']:.6f} | {run['accuracy']:.6f} | {difference:.3g} |")
    say()
    say(f"Saving the models encrypted: Spark pipeline {spark_save:.2f} s, XGBoost {xgboost_save:.2f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
