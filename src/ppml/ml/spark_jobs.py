"""The Spark side of :mod:`ppml.ml.jobs`: fit a Spark ML pipeline on an encrypted data set, and score one.

Data is read by ppml's Spark data source (each executor decrypts its own splits), features are assembled
into a vector, and the fitted pipeline (assembler and estimator) is what gets saved. Scores are written by
the same data source, encrypted, with the data's columns, ``prediction`` and the class probabilities.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pyspark.ml import Pipeline
from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator, RegressionEvaluator
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, StructField, StructType

from ppml.errors import ConfigError, UsageError
from ppml.keys.settings import KeySettings
from ppml.ml.schema import sql_type

__all__ = ["fit", "score", "read", "FEATURES"]

#: The assembled feature vector's column; scoring data must not have a column of this name.
FEATURES = "ppml_features"


def read(spark: Any, spec, keys: KeySettings, columns: Sequence[tuple[str, Any]], data_key: str | None = None,
         wanted: Sequence[str] | None = None):
    """The encrypted data set, whose files have ``columns`` (names and Arrow types), as a DataFrame of the
    ``wanted`` columns (default: all; the others are not even parsed)."""
    from ppml.spark import PPMLContext

    if spark is None:
        raise ConfigError("Spark estimators and models need a SparkSession")
    if spec.format not in ("csv", "json"):
        raise UsageError(f"Spark reads encrypted csv or json data, not {spec.format}",
                         hint="train with a scikit-learn, XGBoost or LightGBM estimator for Parquet files")
    schema = StructType([StructField(name, DataType.fromDDL(sql_type(t))) for name, t in columns])
    ctx = PPMLContext(spark, keys=keys, data_key=data_key)
    reader = ctx.read().schema(schema)
    if wanted is not None:
        reader = reader.columns(*wanted)
    if spec.format == "csv":
        reader = reader.option("header", spec.header).option("sep", spec.sep)
    return ctx, reader.load(list(spec.paths), spec.format)


def _metrics(task: str, predictions, label: str) -> dict[str, float]:
    if task == "regression":
        evaluator = RegressionEvaluator(labelCol=label, predictionCol="prediction")
        return {name: float(evaluator.setMetricName(name).evaluate(predictions)) for name in ("rmse", "r2")}
    accuracy = MulticlassClassificationEvaluator(labelCol=label, predictionCol="prediction", metricName="accuracy")
    result = {"accuracy": float(accuracy.evaluate(predictions))}
    if "rawPrediction" in predictions.columns and predictions.select(label).distinct().count() == 2:
        auc = BinaryClassificationEvaluator(labelCol=label, rawPredictionCol="rawPrediction")
        result["auc"] = float(auc.evaluate(predictions))
    return result


def fit(frame, estimator, params, seed, features, label, test_fraction):
    """Fit ``VectorAssembler`` + the estimator on a DataFrame; returns the pipeline model, metrics, row counts
    and timings."""
    seconds: dict[str, float] = {}
    frame = frame.withColumn(label, F.col(label).cast("double"))
    fitting, testing = frame.randomSplit([1 - test_fraction, test_fraction], seed or 0) if test_fraction \
        else (frame, frame)
    stage = estimator.build({"featuresCol": FEATURES, "labelCol": label, **params}, seed)
    pipeline = Pipeline(stages=[VectorAssembler(inputCols=list(features), outputCol=FEATURES), stage])
    clock = time.perf_counter()
    model = pipeline.fit(fitting)
    seconds["fit"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    metrics = _metrics(estimator.task, model.transform(testing), label)
    rows = {"train": fitting.count(), "test": testing.count() if test_fraction else 0}
    seconds["evaluate"] = round(time.perf_counter() - clock, 3)
    return model, metrics, rows, seconds


def score(spark, model, info, spec, keys, columns, out, data_key, force):
    """Predictions of ``model`` for the data set, written encrypted to ``out``; ``None`` rows, metrics, timings."""
    if any(name == FEATURES for name, _ in columns):
        raise UsageError(f"the data has a column named {FEATURES}, which scoring uses for the features")
    ctx, frame = read(spark, spec, keys, columns, data_key=str(data_key))
    clock = time.perf_counter()
    predictions = model.transform(frame)
    label = (info.label or {}).get("name")
    task = "classification" if "probability" in predictions.columns else "regression"
    metrics = {}
    if label in frame.columns:
        measured = predictions.withColumn(label, F.col(label).cast("double"))
        metrics = _metrics(task, measured, label)
    selected = [F.col(f"`{name}`") for name, _ in columns] + [F.col("prediction")]
    if "probability" in predictions.columns:
        width = len(predictions.select("probability").first()[0]) if predictions.take(1) else 2
        probabilities = vector_to_array(F.col("probability"))
        if width == 2:
            selected.append(probabilities[1].alias("probability"))
        else:
            selected.extend(probabilities[i].alias(f"probability_{i}") for i in range(width))
    ctx.write(predictions.select(*selected)).mode("overwrite" if force else "error").option("header", True).csv(out)
    # The row count would cost another pass over the data: Spark scoring reports none.
    return None, metrics, {"score": round(time.perf_counter() - clock, 3)}
