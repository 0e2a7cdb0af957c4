"""Estimators by name, for ``ppml ml train --estimator NAME``: each library's usual classifiers and regressors.

A name is ``<library>:<estimator>``; the library also says where training runs (``spark:`` names run on
Spark DataFrames read through ppml's data source, the others in this process on pandas data read through
ppml's file objects). Hyper-parameters are the library's own names (``--param maxIter=50``,
``--param n_estimators=200``); ``seed`` goes to whichever parameter the estimator seeds with.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ppml.errors import ConfigError, UsageError

__all__ = ["Estimator", "ESTIMATORS", "estimator", "parse_params"]


@dataclass(frozen=True)
class Estimator:
    """A named estimator: ``target`` is ``module:Class``; ``task`` is ``classification`` or ``regression``."""

    name: str
    target: str
    task: str
    seed_param: str | None
    extra: str = "ml"
    defaults: tuple[tuple[str, Any], ...] = ()

    @property
    def engine(self) -> str:
        """``spark`` or ``python``: where it trains."""
        return "spark" if self.name.startswith("spark:") else "python"

    def build(self, params: Mapping[str, Any], seed: int | None) -> Any:
        """An unfitted instance with ``params`` over this estimator's defaults, seeded with ``seed``."""
        module, _, cls_name = self.target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except ImportError:
            raise ConfigError(f"estimator {self.name} needs {module.split('.')[0]}, which is not installed",
                              hint=f"pip install 'ppml[{self.extra}]'") from None
        arguments = {**dict(self.defaults), **params}
        if seed is not None and self.seed_param:
            arguments.setdefault(self.seed_param, seed)
        try:
            return cls(**arguments)
        except TypeError as exc:
            raise UsageError(f"estimator {self.name}: {exc}",
                             hint=f"--param takes {cls_name}'s own parameter names") from None


def _all() -> Iterable[Estimator]:
    spark = "pyspark.ml.classification", "pyspark.ml.regression"
    yield Estimator("spark:logistic-regression", f"{spark[0]}:LogisticRegression", "classification", None, "spark")
    yield Estimator("spark:gbt-classifier", f"{spark[0]}:GBTClassifier", "classification", "seed", "spark")
    yield Estimator("spark:random-forest-classifier", f"{spark[0]}:RandomForestClassifier", "classification",
                    "seed", "spark")
    yield Estimator("spark:linear-regression", f"{spark[1]}:LinearRegression", "regression", None, "spark")
    yield Estimator("spark:gbt-regressor", f"{spark[1]}:GBTRegressor", "regression", "seed", "spark")
    yield Estimator("spark:xgboost-classifier", "xgboost.spark:SparkXGBClassifier", "classification",
                    "random_state", "ml", (("num_workers", 1),))
    yield Estimator("spark:xgboost-regressor", "xgboost.spark:SparkXGBRegressor", "regression", "random_state",
                    "ml", (("num_workers", 1),))
    yield Estimator("sklearn:logistic-regression", "sklearn.linear_model:LogisticRegression", "classification",
                    "random_state", "ml", (("max_iter", 1000),))
    yield Estimator("sklearn:random-forest-classifier", "sklearn.ensemble:RandomForestClassifier", "classification",
                    "random_state")
    yield Estimator("sklearn:hist-gradient-boosting-classifier", "sklearn.ensemble:HistGradientBoostingClassifier",
                    "classification", "random_state")
    yield Estimator("sklearn:linear-regression", "sklearn.linear_model:LinearRegression", "regression", None)
    yield Estimator("sklearn:random-forest-regressor", "sklearn.ensemble:RandomForestRegressor", "regression",
                    "random_state")
    yield Estimator("xgboost:classifier", "xgboost:XGBClassifier", "classification", "random_state")
    yield Estimator("xgboost:regressor", "xgboost:XGBRegressor", "regression", "random_state")
    yield Estimator("lightgbm:classifier", "lightgbm:LGBMClassifier", "classification", "random_state", "ml",
                    (("verbose", -1),))
    yield Estimator("lightgbm:regressor", "lightgbm:LGBMRegressor", "regression", "random_state", "ml",
                    (("verbose", -1),))


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in _all()}


def estimator(name: str) -> Estimator:
    """The estimator called ``name`` (case-insensitive)."""
    found = ESTIMATORS.get(name.lower())
    if found is None:
        raise UsageError(f"unknown estimator {name!r}", hint="choose one of: " + ", ".join(ESTIMATORS))
    return found


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict; values are JSON when they parse as JSON (``50``, ``0.1``, ``true``),
    else strings."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r} is not KEY=VALUE")
        try:
            params[key.strip()] = json.loads(value)
        except ValueError:
            params[key.strip()] = value
    return params
