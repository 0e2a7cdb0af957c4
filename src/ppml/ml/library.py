"""One interface for every machine-learning library whose models ppml saves, registered by name.

A library turns a fitted model into named byte strings in the library's own format (:meth:`ModelLibrary.dump`)
and back (:meth:`ModelLibrary.restore`). It never touches the disk: the container (:mod:`ppml.ml.container`)
encrypts what it is given, and hands it back only after every byte has been authenticated. Libraries are
imported on first use, so ``import ppml`` never imports scikit-learn, XGBoost, LightGBM, PyTorch or Spark.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ppml.errors import ConfigError, WrongModelError
from ppml.registry import Registry

__all__ = ["ModelLibrary", "Payload", "LIBRARIES", "library_of", "require", "qualified_name", "json_values",
           "without_placeholders", "wrapper_name"]


@dataclass
class Payload:
    """A model in its library's own format: the files and what the manifest says about them.

    Parameters
    ----------
    files
        Name (``/``-separated, relative) -> bytes, in the library's format.
    format
        The format's name (``skops``, ``ubjson``, ``lightgbm-text``, ``safetensors``, ``spark-ml``...).
    model_class
        The fitted model's fully qualified class name.
    versions
        Library name -> version that wrote the files.
    features
        The feature columns the model was fitted on, when the model knows them.
    details
        Library-specific facts that loading needs (classes, stage layout...), JSON-compatible.
    """

    files: dict[str, bytes]
    format: str
    model_class: str
    versions: dict[str, str]
    features: list[str] | None = None
    details: dict[str, Any] = field(default_factory=dict)


class ModelLibrary(ABC):
    """A machine-learning library: how its fitted models become bytes and back, without pickle where the
    library has a format that does not execute code."""

    #: The registered name (``sklearn``, ``xgboost``, ``lightgbm``, ``torch``, ``spark``).
    name: ClassVar[str]
    #: Top-level modules whose classes this library owns; a model is recognised without importing anything.
    modules: ClassVar[tuple[str, ...]]
    #: The optional extra that installs the library.
    extra: ClassVar[str] = "ml"

    def owns(self, model: object) -> bool:
        """Whether ``model`` (an instance) belongs to this library, judged by the modules of its classes."""
        return any(cls.__module__.split(".")[0] in self.modules for cls in type(model).__mro__)

    @abstractmethod
    def dump(self, model: object, *, spark: Any = None) -> Payload:
        """The fitted ``model`` as a :class:`Payload`, written to memory only."""

    @abstractmethod
    def restore(self, files: Mapping[str, bytes], manifest: Mapping[str, Any], *, spark: Any = None,
                trusted: Sequence[str] = ()) -> object:
        """The model from authenticated ``files``; ``trusted`` names extra classes the caller allows."""


LIBRARIES: Registry[ModelLibrary] = Registry(
    "model library",
    known={
        "spark": ("ppml.ml.spark:SparkModels", "spark"),
        "torch": ("ppml.ml.torch:TorchModels", "torch"),
        "xgboost": ("ppml.ml.xgboost:XGBoostModels", "ml"),
        "lightgbm": ("ppml.ml.lightgbm:LightGBMModels", "ml"),
        "sklearn": ("ppml.ml.sklearn:SklearnModels", "ml"),
    },
    aliases={"scikit-learn": "sklearn", "pytorch": "torch", "pyspark": "spark", "spark-ml": "spark"},
)
# Detection order: a Spark estimator wrapping XGBoost is a Spark stage, and XGBoost's and LightGBM's
# scikit-learn wrappers are scikit-learn estimators too; the most specific library claims a model first.
_DETECTION_ORDER = ("spark", "torch", "xgboost", "lightgbm", "sklearn")


def library_of(model: object, name: str | None = None) -> ModelLibrary:
    """The library of ``model`` (or the one named), refusing objects no library owns."""
    from ppml.errors import UsageError

    if name is not None:
        library = LIBRARIES.get(name)()
        if not library.owns(model):
            raise UsageError(f"a {qualified_name(model)} is not a {library.name} model")
        return library
    for candidate in _DETECTION_ORDER:
        library = LIBRARIES.get(candidate)()
        if library.owns(model):
            return library
    raise UsageError(f"cannot save a {qualified_name(model)}: it is not a model of "
                     f"{', '.join(_DETECTION_ORDER)}",
                     hint="save fitted estimators, boosters, Spark ML models or PyTorch state dicts")


def require(module: str, extra: str) -> Any:
    """Import ``module``, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed", hint=f"pip install 'ppml[{extra}]'") from None


def qualified_name(obj: object) -> str:
    """``module.Class`` of an instance."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def json_values(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Parameters as JSON can hold them; a value it cannot (an estimator, a function) becomes the placeholder
    ``"<module.Class>"``, recorded for provenance but never passed back to a constructor."""
    values = {}
    for name, value in items:
        try:
            json.dumps(value)
            values[name] = value
        except (TypeError, ValueError):
            values[name] = f"<{qualified_name(value)}>"
    return values


def without_placeholders(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` less the placeholders of :func:`json_values`: the class defaults stand for those."""
    return {k: v for k, v in (params or {}).items() if not (isinstance(v, str) and v.startswith("<"))}


def wrapper_name(model: object, base: type, allowed: Sequence[str]) -> str | None:
    """The class name of ``model`` when it is one of the ``allowed`` scikit-learn wrappers deriving from
    ``base``; ``None`` for a booster; refuses other subclasses, which ppml could not rebuild."""
    if not isinstance(model, base):
        return None
    name = type(model).__name__
    if name not in allowed:
        raise WrongModelError(f"cannot save a {qualified_name(model)}", hint=f"save one of {', '.join(allowed)}")
    return name
