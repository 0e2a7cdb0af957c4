"""XGBoost boosters and scikit-learn wrappers in XGBoost's own UBJSON model format (no pickle).

The booster is saved with ``save_raw("ubj")``, which holds the trees, the objective and the feature names.
A wrapper (``XGBClassifier``...) is rebuilt from an allow-list of XGBoost's classes with its JSON-compatible
hyper-parameters, then given the booster, the way XGBoost's own ``load_model`` does it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ppml.errors import WrongModelError
from ppml.ml.library import ModelLibrary, Payload, qualified_name, require, without_placeholders, wrapper_name

__all__ = ["XGBoostModels", "booster_bytes", "rebuild"]

FORMAT = "ubjson"
ENTRY = "model.ubj"
#: Classes a file may ask to be rebuilt as, by the name XGBoost exports them under.
WRAPPERS = ("XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier", "XGBRFRegressor")


def booster_bytes(model: Any) -> bytes:
    """The UBJSON model of a booster or wrapper."""
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    return bytes(booster.save_raw(raw_format="ubj"))


def rebuild(wrapper: str | None, params: Mapping[str, Any] | None, data: bytes) -> Any:
    """A ``Booster`` (``wrapper=None``) or the allowed wrapper class ``wrapper`` holding the model ``data``."""
    xgboost = require("xgboost", "ml")
    if wrapper is None:
        booster = xgboost.Booster()
        booster.load_model(bytearray(data))
        return booster
    if wrapper not in WRAPPERS:
        raise WrongModelError(f"an XGBoost model of class {wrapper!r} cannot be loaded",
                              hint=f"ppml rebuilds {', '.join(WRAPPERS)} and Booster")
    model = getattr(xgboost, wrapper)(**without_placeholders(params))
    model.load_model(bytearray(data))
    return model


class XGBoostModels(ModelLibrary):
    name = "xgboost"
    modules = ("xgboost",)

    def dump(self, model: Any, *, spark: Any = None) -> Payload:
        xgboost = require("xgboost", self.extra)
        from ppml.ml.sklearn import json_params

        wrapper = wrapper_name(model, xgboost.XGBModel, WRAPPERS)
        booster = model.get_booster() if wrapper else model
        details: dict[str, Any] = {"wrapper": wrapper, "params": json_params(model) if wrapper else None}
        if wrapper and hasattr(model, "classes_"):
            details["classes"] = [c.item() if hasattr(c, "item") else c for c in model.classes_]
        return Payload({ENTRY: booster_bytes(booster)}, FORMAT, qualified_name(model),
                       {"xgboost": xgboost.__version__}, features=booster.feature_names, details=details)

    def restore(self, files: Mapping[str, bytes], manifest: Mapping[str, Any], *, spark: Any = None,
                trusted: Sequence[str] = ()) -> Any:
        if manifest.get("format") != FORMAT or ENTRY not in files:
            raise WrongModelError(f"an XGBoost model in format {manifest.get('format')!r} cannot be loaded")
        details = manifest.get("details") or {}
        return rebuild(details.get("wrapper"), details.get("params"), files[ENTRY])
