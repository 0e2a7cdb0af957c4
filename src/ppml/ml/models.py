"""Save, load and inspect models encrypted at rest: ``ppml.ml.save``, ``ppml.ml.load``, ``ppml.ml.inspect``.

A model file is an ordinary ppml-encrypted file (see :mod:`ppml.ml.container`), so it opens only for
processes that can unwrap its data key: with ``KeySettings(broker_url=...)`` only for attested processes whose
release policy allows that key. Nothing is written to disk in plaintext: the library's bytes are produced in
memory (Spark ML's writers on a memory file system, see :mod:`ppml.ml.staging`) and encrypted as they are
written; loading authenticates the whole file before the library parses any of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ppml import __version__
from ppml.errors import WrongModelError
from ppml.io import recipes
from ppml.io.datasets import dataset_facts, latest_version
from ppml.io.storage import locate
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.settings import KeySettings
from ppml.ml.container import read_container, write_container
from ppml.ml.library import LIBRARIES, library_of
from ppml.ml.schema import Column, check_columns, columns_of

__all__ = ["ModelInfo", "save", "load", "inspect", "input_files", "PROVENANCE_SCHEMA"]

PROVENANCE_SCHEMA = "ppml.provenance/0"
PathLike = str | os.PathLike


@dataclass(frozen=True)
class ModelInfo:
    """What a model file's authenticated manifest says.

    Attributes
    ----------
    path
        The model file.
    manifest
        The whole manifest (see :mod:`ppml.ml.container`).
    """

    path: str
    manifest: Mapping[str, Any]

    @property
    def library(self) -> str:
        return self.manifest["library"]

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def model_class(self) -> str:
        return self.manifest["model_class"]

    @property
    def features(self) -> list[Column]:
        return list(self.manifest.get("features") or [])

    @property
    def label(self) -> Column | None:
        return self.manifest.get("label")

    @property
    def digest(self) -> str:
        """SHA-256 of the model's payload (the same after re-encryption under another key)."""
        return self.manifest["digest"]

    @property
    def provenance(self) -> Mapping[str, Any]:
        return self.manifest.get("provenance") or {}

    def check(self, data_schema: Any, *, what: str = "the data") -> None:
        """Raise :class:`~ppml.errors.SchemaMismatchError` unless ``data_schema`` (column names, a Spark or
        Arrow schema, a pandas DataFrame) has every feature column, with types of the same family."""
        check_columns(self.features, columns_of(data_schema), what=what)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, **self.manifest}


def input_files(paths: Sequence[PathLike], keys: KeySettings) -> list[dict[str, Any]]:
    """Provenance of training inputs: every file under each path with its file id and wrapping keys, read
    from the headers, and for a data set its id, version and manifest digest (checked with ``keys``)."""
    inputs = []
    for path in paths:
        location = locate(os.fspath(path))
        version = latest_version(location, keys.keyring()) if location.is_dir() else None
        entries = [location.child(rel) if rel else location for rel, _ in location.files()]
        described = []
        for entry in entries:
            info = recipes.inspect(entry.url)
            described.append({"path": entry.url, "format": info.format, "file_id": info.facts.get("file_id"),
                              "keys": [w.reference for w in info.envelope]})
        data_set = {"data_set": dataset_facts(version)} if version is not None else {}
        inputs.append({"path": location.url, **data_set, "files": described})
    return inputs


def _code_facts(code: str | bytes | None) -> dict[str, Any]:
    """A digest of the training code: ``code`` as given, else the running script (``__main__``'s file)."""
    if code is None:
        script = getattr(sys.modules.get("__main__"), "__file__", None)
        if script and os.path.isfile(script):
            with open(script, "rb") as handle:
                return {"sha256": hashlib.sha256(handle.read()).hexdigest(), "script": os.path.basename(script)}
        return {"sha256": None}
    data = code.encode() if isinstance(code, str) else bytes(code)
    return {"sha256": hashlib.sha256(data).hexdigest()}


def _canonical_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def save(model: Any, path: PathLike, *, data_key: PathLike, keys: KeySettings | None = None,
         features: Any = None, label: Any = None, inputs: Sequence[PathLike] = (), code: str | bytes | None = None,
         params: Mapping[str, Any] | None = None, library: str | None = None, spark: Any = None,
         force: bool = False) -> ModelInfo:
    """Save a fitted model encrypted, in its library's own format, with an authenticated manifest.

    Parameters
    ----------
    model
        A fitted scikit-learn estimator (skops format), an XGBoost booster or scikit-learn wrapper (UBJSON), a
        LightGBM booster or wrapper (LightGBM's text model), a PyTorch module or state dict (safetensors), or
        a Spark ML model or pipeline model (Spark's own format, including XGBoost's Spark models).
    path
        The model file to write (a local path or a URL such as ``abfss://``); it appears only when complete.
    data_key
        The data-key file to encrypt under. Its key id and wrapping keys go into the provenance.
    keys
        Which key management services unwrap ``data_key`` (default: this process's environment).
    features
        The feature columns, in the order the model takes them: names, ``{name: type}``, a Spark or Arrow
        schema. Default: what the model knows (``feature_names_in_``, a booster's feature names).
    label
        The label column's name (or ``{"name": ..., "type": ...}``), recorded for scoring.
    inputs
        The encrypted data sets the model was trained on; each file's id and wrapping keys are recorded.
    code
        The training code (or a description of it), of which a SHA-256 is recorded; default: the running
        script.
    params
        Training parameters to record (default: the estimator's own, where the library exposes them).
    library
        Force a library instead of detecting it from the model's class.
    spark
        The ``SparkSession`` for Spark models (default: the active one).
    force
        Replace an existing file.

    Returns
    -------
    ModelInfo
        The manifest as written.
    """
    handler = library_of(model, library)
    payload = handler.dump(model, spark=spark)
    keys = keys or KeySettings()
    key_file = DataKeyFile.load(data_key)
    recorded_params = dict(params) if params is not None else payload.details.get("params")
    columns = columns_of(features) if features is not None else columns_of(payload.features)
    label_column = columns_of([label])[0] if label else None
    manifest = {
        "library": handler.name,
        "format": payload.format,
        "model_class": payload.model_class,
        "versions": {"ppml": __version__, "python": platform.python_version(), **payload.versions},
        "features": columns,
        "label": label_column,
        "details": payload.details,
        "provenance": {
            "schema": PROVENANCE_SCHEMA,
            "inputs": input_files(inputs, keys),
            "code": _code_facts(code),
            "params": recorded_params,
            "params_sha256": _canonical_digest(recorded_params),
            "keys": {"data_key_id": key_file.key_id, "wrapped_by": [w.reference for w in key_file.envelope]},
        },
    }
    written = write_container(path, manifest, payload.files, data_key=data_key, keys=keys, force=force)
    return ModelInfo(os.fspath(path), written)


def inspect(path: PathLike, *, keys: KeySettings | None = None, data_key: PathLike | None = None) -> ModelInfo:
    """The authenticated manifest of a model file (its key is needed: the manifest is encrypted too)."""
    manifest, _ = read_container(path, keys=keys, data_key=data_key)
    return ModelInfo(os.fspath(path), manifest)


def load(path: PathLike, *, keys: KeySettings | None = None, library: str | None = None,
         data_key: PathLike | None = None, spark: Any = None, trusted: Sequence[str] = (),
         with_info: bool = False) -> Any:
    """Load a model saved by :func:`save`, after authenticating the whole file.

    Parameters
    ----------
    path
        The model file.
    keys
        Which key management services unwrap its key (a key broker releases it only to attested processes).
    library
        The library the caller expects (``sklearn``, ``xgboost``, ``lightgbm``, ``torch``, ``spark``); a model
        of another library is refused with :class:`~ppml.errors.WrongModelError` before it is parsed.
    data_key
        A data-key file to use instead of the key the file's header names.
    spark
        The ``SparkSession`` that loads Spark models (default: the active one).
    trusted
        Classes (fully qualified names) to allow beyond each library's own: scikit-learn objects outside
        scikit-learn, Spark ML stages outside Spark and XGBoost.
    with_info
        Return ``(model, ModelInfo)`` instead of the model alone.
    """
    manifest, files = read_container(path, keys=keys, data_key=data_key)
    found = manifest.get("library")
    if library is not None and LIBRARIES.canonical(library) != found:
        raise WrongModelError(f"{os.fspath(path)} holds a {found} model ({manifest.get('model_class')}), "
                              f"not a {LIBRARIES.canonical(library)} one",
                              hint=f"load it with library={found!r}")
    if found not in LIBRARIES:
        raise WrongModelError(f"{os.fspath(path)} holds a model of library {found!r}, which this ppml cannot load")
    model = LIBRARIES.get(found)().restore(files, manifest, spark=spark, trusted=trusted)
    return (model, ModelInfo(os.fspath(path), manifest)) if with_info else model
