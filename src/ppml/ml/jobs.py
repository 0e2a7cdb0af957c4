"""Training and scoring jobs on encrypted data sets, as ``ppml ml train`` and ``ppml ml score`` run them.

A job reads an encrypted data set (CSV, JSON lines, or for in-process libraries Parquet), fits a named
estimator (:mod:`ppml.ml.estimators`) on its numeric feature columns, measures it on a held-out share, and saves
the model encrypted with its feature schema and provenance; or it loads an encrypted model, checks the data
against the model's schema and writes the predictions encrypted. Spark estimators run through
:class:`~ppml.spark.PPMLContext`, the others in this process (:mod:`ppml.ml.data`). Nothing is written in
plaintext; results carry timings and metrics for the command line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ppml.errors import AlreadyExistsError, SchemaMismatchError, UsageError
from ppml.keys.settings import KeySettings
from ppml.ml import data as ml_data
from ppml.ml.estimators import Estimator
from ppml.ml.models import ModelInfo, load, save
from ppml.ml.schema import family, sql_type

__all__ = ["DataSpec", "TrainResult", "ScoreResult", "train", "score", "infer_columns", "fit_python", "split_rows",
           "python_metrics"]


@dataclass(frozen=True)
class DataSpec:
    """An encrypted data set: its paths and layout."""

    paths: tuple[str, ...]
    format: str = "csv"
    header: bool = True
    sep: str = ","

    def csv_options(self) -> dict[str, Any]:
        return {"header": self.header, "sep": self.sep} if self.format == "csv" else {}


@dataclass
class TrainResult:
    info: ModelInfo
    metrics: dict[str, float]
    seconds: dict[str, float]
    rows: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.info.path, "library": self.info.library, "digest": self.info.digest,
                "metrics": self.metrics, "seconds": self.seconds, "rows": self.rows}


@dataclass
class ScoreResult:
    output: str
    rows: int | None
    seconds: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "rows": self.rows, "metrics": self.metrics, "seconds": self.seconds}


def infer_columns(spec: DataSpec, keys: KeySettings) -> list[tuple[str, Any]]:
    """Column names and Arrow types of the data set, from its first file (the first block of a CSV)."""
    import pyarrow

    first = ml_data.data_files(spec.paths, keys)[0]
    with first.open(keys) as plaintext:
        try:
            if spec.format == "csv":
                import pyarrow.csv as csv

                read, parse, convert = ml_data.csv_options(spec.csv_options())
                # Closed before the file is: the reader reads ahead on a thread of its own.
                with csv.open_csv(plaintext, read_options=read, parse_options=parse,
                                  convert_options=convert) as reader:
                    schema = reader.schema
            elif spec.format == "parquet":
                import pyarrow.parquet as pq

                schema = pq.read_schema(plaintext)
            else:
                import pyarrow.json as pj

                schema = pj.read_json(plaintext).schema
        except pyarrow.ArrowException as exc:
            raise ml_data.parse_error(first.url, spec.format, exc) from None
    return list(zip(schema.names, schema.types, strict=True))


def _feature_columns(columns: Sequence[tuple[str, Any]], label: str, features: Sequence[str] | None) -> list[str]:
    names = [n for n, _ in columns]
    if label not in names:
        raise SchemaMismatchError(f"the data has no label column {label!r}", hint=f"columns: {names}")
    chosen = list(features) if features else [n for n in names if n != label]
    types = dict(columns)
    missing = [f for f in chosen if f not in types]
    text = [f for f in chosen if f in types and family(str(types[f])) != "numeric"]
    if missing or text:
        raise SchemaMismatchError(
            "features must be numeric columns of the data: " + "; ".join(
                ([f"missing {missing}"] if missing else []) + ([f"not numeric {text}"] if text else [])),
            hint="choose numeric columns with --features a,b,c (encode text columns before training)")
    return chosen


def _refuse_existing(out: str | os.PathLike, force: bool) -> None:
    """Fail before the work, not after it, when the output exists."""
    from ppml.io.storage import locate

    target = locate(os.fspath(out))
    if not force and target.exists() and (not target.is_dir() or target.files()):
        raise AlreadyExistsError(f"{target.url} already exists", hint="use --force to replace it")


def _code_digest(estimator: Estimator, params: dict[str, Any], seed: int | None) -> str:
    from ppml import __version__

    return json.dumps({"ppml": __version__, "estimator": estimator.name, "target": estimator.target,
                       "params": params, "seed": seed}, sort_keys=True, default=str)


def train(spec: DataSpec, *, estimator: Estimator, label: str, out: str, data_key: str | os.PathLike,
          keys: KeySettings, features: Sequence[str] | None = None, params: dict[str, Any] | None = None,
          seed: int | None = 42, test_fraction: float = 0.2, spark: Any = None, force: bool = False) -> TrainResult:
    """Fit ``estimator`` on the encrypted data set and save the model encrypted to ``out``.

    ``test_fraction`` of the rows (chosen with ``seed``) are held out and the model's quality measured on
    them (accuracy and, for two classes, area under the ROC curve; or RMSE and R²); 0 measures on the
    training rows. Spark estimators need ``spark``, a session.
    """
    if not 0 <= test_fraction < 1:
        raise UsageError(f"the test fraction must be at least 0 and below 1, not {test_fraction}")
    _refuse_existing(out, force)
    params = dict(params or {})
    started = time.perf_counter()
    columns = infer_columns(spec, keys)
    chosen = _feature_columns(columns, label, features)
    types = dict(columns)
    clock = time.perf_counter()
    if estimator.engine == "spark":
        from ppml.ml import spark_jobs

        _, frame = spark_jobs.read(spark, spec, keys, columns, wanted=[*chosen, label])
        read_seconds = time.perf_counter() - clock  # lazy: Spark reads while it fits
        model, metrics, rows, seconds = spark_jobs.fit(frame, estimator, params, seed, chosen, label, test_fraction)
    else:
        frame = ml_data.read_pandas(spec.paths, keys=keys, format=spec.format, **spec.csv_options())
        read_seconds = time.perf_counter() - clock
        model, metrics, rows, seconds = fit_python(frame, estimator, params, seed, chosen, label, test_fraction)
    seconds = {"read": round(read_seconds, 3), **seconds}
    saving = time.perf_counter()
    info = save(model, out, data_key=data_key, keys=keys, spark=spark, force=force,
                features={name: sql_type(types[name]) for name in chosen},
                label={"name": label, "type": sql_type(types[label])}, inputs=spec.paths,
                code=_code_digest(estimator, params, seed), params={"estimator": estimator.name, **params,
                                                                     "seed": seed, "test_fraction": test_fraction})
    seconds["save"] = round(time.perf_counter() - saving, 3)
    seconds["total"] = round(time.perf_counter() - started, 3)
    return TrainResult(info, metrics, seconds, rows)


def split_rows(count: int, test_fraction: float, seed: int | None):
    """Boolean mask of held-out rows: ``test_fraction`` of ``count``, chosen with ``seed``."""
    import numpy as np

    mask = np.zeros(count, dtype=bool)
    if test_fraction > 0:
        mask[np.random.default_rng(seed).permutation(count)[: int(round(count * test_fraction))]] = True
    return mask


def python_metrics(task: str, truth, predicted, probabilities=None) -> dict[str, float]:
    """Accuracy (and ROC AUC for two classes) or RMSE and R², as plain floats."""
    from sklearn import metrics

    if task == "classification":
        result = {"accuracy": float(metrics.accuracy_score(truth, predicted))}
        if probabilities is not None and probabilities.shape[1] == 2 and len(set(truth)) == 2:
            result["auc"] = float(metrics.roc_auc_score(truth, probabilities[:, 1]))
        return result
    return {"rmse": float(metrics.root_mean_squared_error(truth, predicted)),
            "r2": float(metrics.r2_score(truth, predicted))}


def fit_python(frame, estimator: Estimator, params: dict[str, Any], seed: int | None, features: Sequence[str],
               label: str, test_fraction: float):
    """Fit ``estimator`` on a pandas ``frame``; returns the model, metrics, row counts and timings."""
    seconds: dict[str, float] = {}
    held_out = split_rows(len(frame), test_fraction, seed)
    fit_rows = frame[~held_out] if test_fraction else frame
    test_rows = frame[held_out] if test_fraction else frame
    model = estimator.build(params, seed)
    clock = time.perf_counter()
    model.fit(fit_rows[list(features)], fit_rows[label])
    seconds["fit"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    x = test_rows[list(features)]
    probabilities = model.predict_proba(x) if hasattr(model, "predict_proba") else None
    metrics = python_metrics(estimator.task, test_rows[label].to_numpy(), model.predict(x), probabilities)
    seconds["evaluate"] = round(time.perf_counter() - clock, 3)
    return model, metrics, {"train": int(len(fit_rows)), "test": int(held_out.sum())}, seconds


def score(model_path: str | os.PathLike, spec: DataSpec, *, out: str, data_key: str | os.PathLike,
          keys: KeySettings, spark: Callable[[], Any] | None = None, force: bool = False,
          trusted: Sequence[str] = ()) -> ScoreResult:
    """Predict with the encrypted model for every row of the encrypted data set, into encrypted ``out``.

    ``out`` is a folder of encrypted CSV part files with a header: the data's columns, then ``prediction``
    (and ``probability`` of the positive class, or ``probability_<class>``, for classifiers). When the data
    has the model's label column, the quality of the predictions is measured too. ``spark`` makes the
    SparkSession for Spark models (called only for them).
    """
    from ppml.ml.models import inspect

    _refuse_existing(out, force)
    started = time.perf_counter()
    library = inspect(model_path, keys=keys).library
    if library == "torch":
        raise UsageError(f"{os.fspath(model_path)} holds a PyTorch state dict, which needs its module to score",
                         hint="score PyTorch models in Python: module.load_state_dict(ppml.ml.load(...))")
    session = spark() if library == "spark" and spark is not None else None
    model, info = load(model_path, keys=keys, spark=session, trusted=trusted, with_info=True)
    columns = infer_columns(spec, keys)
    info.check({name: sql_type(t) for name, t in columns}, what=", ".join(spec.paths))
    if info.library == "spark":
        from ppml.ml import spark_jobs

        rows, metrics, seconds = spark_jobs.score(session, model, info, spec, keys, columns, out, data_key, force)
    else:
        rows, metrics, seconds = _score_python(model, info, spec, keys, out, data_key, force)
    seconds["total"] = round(time.perf_counter() - started, 3)
    return ScoreResult(out, rows, seconds, metrics)


def _score_python(model, info: ModelInfo, spec, keys, out, data_key, force):
    import numpy as np

    from ppml.io.encryption import prepare_encryption
    from ppml.io.files import open_encrypted
    from ppml.io.storage import locate, staged_output

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    frame = ml_data.read_pandas(spec.paths, keys=keys, format=spec.format, **spec.csv_options())
    seconds["read"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    features = [c["name"] for c in info.features] or list(frame.columns)
    x = frame[features]
    if info.library == "xgboost" and not hasattr(model, "predict_proba"):  # a raw Booster
        import xgboost

        x = xgboost.DMatrix(x)
    result = frame.copy()
    result["prediction"] = model.predict(x)
    probabilities = model.predict_proba(x) if hasattr(model, "predict_proba") else None
    if probabilities is not None:
        classes = getattr(model, "classes_", range(probabilities.shape[1]))
        if probabilities.shape[1] == 2:
            result["probability"] = probabilities[:, 1]
        else:
            for index, cls in enumerate(classes):
                result[f"probability_{cls}"] = probabilities[:, index]
    seconds["predict"] = round(time.perf_counter() - clock, 3)
    metrics = {}
    label = (info.label or {}).get("name")
    task = "classification" if probabilities is not None else "regression" if _is_regressor(model) else None
    if label in frame.columns and task:  # a raw booster's output is a margin or probability: not measured
        metrics = python_metrics(task, frame[label].to_numpy(), np.asarray(result["prediction"]), probabilities)
    clock = time.perf_counter()
    encryption = prepare_encryption(data_key, keys)
    with staged_output(locate(out), force=force) as staging, \
            open_encrypted(staging.child("part-00000.csv.ppml"), **encryption.writer_arguments()) as writer:
        result.to_csv(writer, index=False)
    seconds["write"] = round(time.perf_counter() - clock, 3)
    return len(result), metrics, seconds


def _is_regressor(model) -> bool:
    from sklearn.base import is_regressor

    return is_regressor(model)
