"""LightGBM boosters and scikit-learn wrappers in LightGBM's own text model format (no pickle).

The booster is saved with ``model_to_string()``. A wrapper (``LGBMClassifier``, ``LGBMRegressor``,
``LGBMRanker``) is rebuilt from its JSON-compatible hyper-parameters and the few fitted facts LightGBM's
``fit`` sets besides the booster (the classes, the objective, the feature count), recorded in the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ppml.errors import WrongModelError
from ppml.ml.library import ModelLibrary, Payload, qualified_name, require, without_placeholders, wrapper_name

__all__ = ["LightGBMModels"]

FORMAT = "lightgbm-text"
ENTRY = "model.txt"
WRAPPERS = ("LGBMClassifier", "LGBMRegressor", "LGBMRanker")


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class LightGBMModels(ModelLibrary):
    name = "lightgbm"
    modules = ("lightgbm",)

    def dump(self, model: Any, *, spark: Any = None) -> Payload:
        lightgbm = require("lightgbm", self.extra)
        from ppml.ml.sklearn import json_params

        wrapper = wrapper_name(model, lightgbm.LGBMModel, WRAPPERS)
        booster = model.booster_ if wrapper else model
        details: dict[str, Any] = {"wrapper": wrapper}
        if wrapper:
            details["params"] = json_params(model)
            details["fitted"] = {"objective": model._objective, "n_features": model._n_features,
                                 "n_features_in": model.n_features_in_,
                                 "best_iteration": model._best_iteration}
            if hasattr(model, "classes_"):
                details["classes"] = [_plain(c) for c in model.classes_]
        return Payload({ENTRY: booster.model_to_string().encode()}, FORMAT, qualified_name(model),
                       {"lightgbm": lightgbm.__version__}, features=list(booster.feature_name()), details=details)

    def restore(self, files: Mapping[str, bytes], manifest: Mapping[str, Any], *, spark: Any = None,
                trusted: Sequence[str] = ()) -> Any:
        lightgbm = require("lightgbm", self.extra)
        if manifest.get("format") != FORMAT or ENTRY not in files:
            raise WrongModelError(f"a LightGBM model in format {manifest.get('format')!r} cannot be loaded")
        booster = lightgbm.Booster(model_str=files[ENTRY].decode())
        details = manifest.get("details") or {}
        wrapper = details.get("wrapper")
        if wrapper is None:
            return booster
        if wrapper not in WRAPPERS:
            raise WrongModelError(f"a LightGBM model of class {wrapper!r} cannot be loaded",
                                  hint=f"ppml rebuilds {', '.join(WRAPPERS)} and Booster")
        model = getattr(lightgbm, wrapper)(**without_placeholders(details.get("params")))
        fitted = details["fitted"]
        # What LGBMModel.fit sets besides the booster (lightgbm 4.x); predict needs no more.
        model._Booster = booster
        model._objective = fitted["objective"]
        model._n_features = fitted["n_features"]
        model._n_features_in = fitted["n_features_in"]
        model._best_iteration = fitted["best_iteration"]
        model._best_score = booster.best_score
        model._evals_result = {}
        if "classes" in details:
            import numpy as np
            from lightgbm.sklearn import _LGBMLabelEncoder

            model._le = _LGBMLabelEncoder().fit(np.asarray(details["classes"]))
            model._classes = model._le.classes_
            model._n_classes = len(model._classes)
            model._class_map = dict(zip(model._le.classes_, model._le.transform(model._le.classes_), strict=True))
        model.fitted_ = True
        return model
