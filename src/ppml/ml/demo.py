"""The ``ppml ml demo``: the same training on encrypted and on plaintext data, compared.

The data set is real and ships inside scikit-learn: the Breast Cancer Wisconsin (Diagnostic) data set
(569 tumours, 30 numeric features computed from images of fine-needle aspirates, labelled malignant or
benign; W. H. Wolberg, W. N. Street and O. L. Mangasarian, University of Wisconsin, 1995, from the UCI
Machine Learning Repository), read from ``sklearn/datasets/data/breast_cancer.csv`` with no download.

For each estimator the encrypted run is ``ppml ml train``'s job (read through ppml, fit, measure on the
held-out rows, save the model encrypted); the plaintext run reads the plaintext copy with the library's usual
reader (pyarrow's CSV reader, Spark's CSV reader) and fits and measures the same way, with the same seed.
Then the encrypted test rows are scored with an encrypted model into encrypted predictions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ppml.keys.settings import KeySettings
from ppml.ml import jobs
from ppml.ml.estimators import estimator

__all__ = ["DATA_SET", "ESTIMATORS", "write_data", "compare"]

DATA_SET = ("Breast Cancer Wisconsin (Diagnostic), UCI Machine Learning Repository (Wolberg, Street, "
            "Mangasarian, 1995), as shipped in scikit-learn (sklearn/datasets/data/breast_cancer.csv)")
ESTIMATORS = ("sklearn:random-forest-classifier", "xgboost:classifier", "lightgbm:classifier",
              "spark:logistic-regression")
LABEL = "malignant"


def write_data(folder: Path) -> Path:
    """The data set as ``folder/cancer.csv`` (plaintext, column names without spaces; ``malignant`` is 1 for
    a malignant tumour); returns the file."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    # scikit-learn codes benign as 1: name the label for what a positive prediction means
    frame = frame.assign(**{LABEL: 1 - frame.pop("target")})
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "cancer.csv", index=False)
    return folder / "cancer.csv"


def _plaintext_run(name: str, plain: Path, features: list[str], seed: int, spark: Any) -> tuple[dict, float]:
    chosen = estimator(name)
    started = time.perf_counter()
    if chosen.engine == "spark":
        from ppml.ml import spark_jobs

        frame = spark.read.option("header", True).option("inferSchema", True).csv(str(plain))
        _, metrics, _, _ = spark_jobs.fit(frame, chosen, {}, seed, features, LABEL, 0.2)
    else:
        import pyarrow.csv as csv

        frame = csv.read_csv(plain).to_pandas()
        _, metrics, _, _ = jobs.fit_python(frame, chosen, {}, seed, features, LABEL, 0.2)
    return metrics, time.perf_counter() - started


def compare(folder: Path, keys: KeySettings, data_key: Path, *, spark_session: Callable[[], Any] | None,
            seed: int = 42, say: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Encrypt the data set, train each estimator on the encrypted and on the plaintext copy, score the
    encrypted test rows; returns the rows of the comparison and the scoring report."""
    from ppml.io.recipes import encrypt

    plain = write_data(folder / "plain")
    encrypt(plain, folder / "enc" / "cancer.csv.ppml", data_key=data_key, keys=keys, force=True)
    say(f"Encrypted {plain.name} ({DATA_SET}) into {folder / 'enc'}.")
    spec = jobs.DataSpec((str(folder / "enc"),))
    features = [n for n, _ in jobs.infer_columns(spec, keys) if n != LABEL]
    rows, spark = [], None
    for name in ESTIMATORS:
        if estimator(name).engine == "spark":
            if spark_session is None:
                continue
            if spark is None:  # untimed: the JVM, Spark's Python workers and the key, for both readers
                spark = spark_session()
                from ppml.ml import spark_jobs

                spark_jobs.read(spark, spec, keys, jobs.infer_columns(spec, keys))[1].count()
                spark.read.option("header", True).csv(str(plain)).count()
        model = folder / "models" / f"{name.replace(':', '-')}.ppml"
        trained = jobs.train(spec, estimator=estimator(name), label=LABEL, out=str(model), data_key=data_key,
                             keys=keys, seed=seed, spark=spark, force=True)
        baseline, seconds = _plaintext_run(name, plain, features, seed, spark)
        encrypted_seconds = trained.seconds["read"] + trained.seconds["fit"] + trained.seconds["evaluate"]
        rows.append({"estimator": name, "encrypted": trained.metrics, "plaintext": baseline,
                     "same_quality": trained.metrics == baseline, "encrypted_seconds": round(encrypted_seconds, 3),
                     "plaintext_seconds": round(seconds, 3), "save_seconds": trained.seconds["save"],
                     "model": str(model)})
        say(f"{name}: encrypted {trained.metrics}, plaintext {baseline}.")
    scored = jobs.score(folder / "models" / "xgboost-classifier.ppml", spec, out=str(folder / "scores"),
                        data_key=data_key, keys=keys, force=True)
    say(f"Scored the encrypted data with the encrypted XGBoost model into {folder / 'scores'} (encrypted).")
    return {"data_set": DATA_SET, "rows": rows, "score": scored.to_json()}
