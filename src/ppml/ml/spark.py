"""Spark ML models and pipeline models, in Spark's own format, without a plaintext byte on disk.

Saving: each stage of the (possibly nested) pipeline is written by Spark's own writer in Spark 4's *local
saving mode* (``ReadWriteUtils.localSavingModeState``, the mode Spark Connect uses to keep models on the
driver): the driver writes the stage's metadata and data itself, with no task and no executor involved,
into a private folder on a memory file system (:mod:`ppml.ml.staging`). ppml reads the files back into
memory, removes the folder and encrypts them into the model file. XGBoost's Spark models, which are Python
stages writing through executors, are stored as their booster (UBJSON) and their parameters instead.

Loading reverses it after the whole model file is authenticated: every stage's class is checked against an
allow-list (Spark's ``org.apache.spark.ml`` classes and XGBoost's Spark models; ``trusted`` adds more) before
Spark reads a stage, since Spark instantiates the class its metadata names.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ppml.errors import ConfigError, UsageError, WrongModelError
from ppml.ml.library import ModelLibrary, Payload, json_values, qualified_name, require, without_placeholders
from ppml.ml.staging import memory_folder

__all__ = ["SparkModels", "local_saving"]

FORMAT = "spark-ml"
_SPARK_PREFIX = "org.apache.spark.ml."
_XGBOOST_MODELS = ("SparkXGBClassifierModel", "SparkXGBRegressorModel", "SparkXGBRankerModel")
# Parameters xgboost.spark itself leaves out of saved metadata (a callable, a booster, a collective config).
_XGBOOST_SKIPPED = ("callbacks", "xgb_model", "coll_cfg")


def _session(spark: Any):
    pyspark_sql = require("pyspark.sql", "spark")
    spark = spark or pyspark_sql.SparkSession.getActiveSession()
    if spark is None:
        raise ConfigError("Spark ML models need a running SparkSession", hint="pass spark=... or create one first")
    if getattr(spark, "_jvm", None) is None:
        raise ConfigError("Spark ML models are saved and loaded through a classic SparkSession, not Spark Connect")
    return spark


@contextlib.contextmanager
def local_saving(spark: Any) -> Iterator[None]:
    """Spark ML writers and readers of this thread work on the driver's local files only, while the block runs."""
    try:
        state = spark._jvm.org.apache.spark.ml.util.ReadWriteUtils.localSavingModeState()
    except Exception as exc:  # py4j: the class or method does not exist in this Spark
        raise ConfigError("saving Spark ML models without a disk needs Spark 4.0 or newer") from exc
    state.set(True)
    try:
        yield
    finally:
        state.set(False)


def _json_params(param_map: Mapping[Any, Any], skipped: Sequence[str] = ()) -> dict[str, Any]:
    return json_values((param.name, value) for param, value in param_map.items() if param.name not in skipped)


def _read_tree(folder: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


class SparkModels(ModelLibrary):
    name = "spark"
    modules = ("pyspark",)
    extra = "spark"

    def owns(self, model: object) -> bool:  # pyspark.ml only: a DataFrame is no model
        return any(cls.__module__.startswith("pyspark.ml") for cls in type(model).__mro__)

    # -- saving ---------------------------------------------------------------------------------------------

    def dump(self, model: Any, *, spark: Any = None) -> Payload:
        pyspark = require("pyspark", self.extra)
        spark = _session(spark)
        files: dict[str, bytes] = {}
        versions = {"pyspark": pyspark.__version__, "spark": spark.version}
        with memory_folder() as folder, local_saving(spark):
            layout = self._dump_stage(model, folder, files, versions, [0])
        params = {f"{i}:{s['class'].rsplit('.', 1)[-1]}": s.get("params") for i, s in enumerate(_leaves(layout))}
        return Payload(files, FORMAT, qualified_name(model), versions, details={"layout": layout, "params": params})

    def _dump_stage(self, stage: Any, folder: Path, files: dict[str, bytes], versions: dict[str, str],
                    counter: list[int]) -> dict[str, Any]:
        from pyspark.ml import PipelineModel
        from pyspark.ml.wrapper import JavaParams

        if isinstance(stage, PipelineModel):
            return {"kind": "pipeline", "class": qualified_name(stage), "uid": stage.uid,
                    "stages": [self._dump_stage(s, folder, files, versions, counter) for s in stage.stages]}
        name = f"stages/{counter[0]}"
        counter[0] += 1
        if type(stage).__name__ in _XGBOOST_MODELS and type(stage).__module__.startswith("xgboost.spark"):
            from ppml.ml.xgboost import booster_bytes

            versions["xgboost"] = require("xgboost", "ml").__version__
            files[f"{name}/model.ubj"] = booster_bytes(stage.get_booster())
            return {"kind": "xgboost", "class": qualified_name(stage), "uid": stage.uid, "dir": name,
                    "params": _json_params(stage._paramMap, _XGBOOST_SKIPPED),  # as xgboost.spark saves them
                    "defaults": _json_params(stage._defaultParamMap, _XGBOOST_SKIPPED)}
        if not isinstance(stage, JavaParams):
            raise UsageError(f"cannot save the Spark stage {qualified_name(stage)}: ppml saves Spark's own (JVM) "
                             "stages and XGBoost's Spark models",
                             hint="Python-only stages write through executors, which would put files on their disks")
        target = folder / name
        stage.write().save(str(target))
        files.update(_read_tree(target, name))
        return {"kind": "jvm", "class": stage._java_obj.getClass().getName(), "uid": stage.uid, "dir": name,
                "params": _json_params(stage.extractParamMap())}

    # -- loading --------------------------------------------------------------------------------------------

    def restore(self, files: Mapping[str, bytes], manifest: Mapping[str, Any], *, spark: Any = None,
                trusted: Sequence[str] = ()) -> Any:
        if manifest.get("format") != FORMAT:
            raise WrongModelError(f"a Spark model in format {manifest.get('format')!r} cannot be loaded")
        layout = (manifest.get("details") or {}).get("layout")
        if not isinstance(layout, dict):
            raise WrongModelError("the Spark model has no stage layout")
        _check_classes(layout, files, trusted)  # before Spark instantiates anything
        spark = _session(spark)
        with memory_folder() as folder, local_saving(spark):
            for name, data in files.items():
                relative = PurePosixPath(name)
                if relative.is_absolute() or ".." in relative.parts:
                    raise WrongModelError(f"the Spark model holds a file outside its folder: {name!r}")
                target = folder.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            return self._load_stage(layout, folder, files, spark)

    def _load_stage(self, entry: Mapping[str, Any], folder: Path, files: Mapping[str, bytes], spark: Any) -> Any:
        if entry["kind"] == "pipeline":
            from pyspark.ml import PipelineModel

            model = PipelineModel([self._load_stage(s, folder, files, spark) for s in entry["stages"]])
            model._resetUid(entry["uid"])
            return model
        if entry["kind"] == "xgboost":
            return _load_xgboost(entry, files[f"{entry['dir']}/model.ubj"])
        from pyspark.ml.wrapper import JavaParams

        reader = spark._jvm.org.apache.spark.ml.util.DefaultParamsReader
        return JavaParams._from_java(reader.loadParamsInstance(str(folder / entry["dir"]), spark._jsparkSession))


def _leaves(layout: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if layout.get("kind") == "pipeline":
        return [leaf for stage in layout.get("stages", []) for leaf in _leaves(stage)]
    return [layout]


def _check_classes(layout: Mapping[str, Any], files: Mapping[str, bytes], trusted: Sequence[str]) -> None:
    """Refuse stages of classes outside the allow-list: the manifest's XGBoost stages, and the class named by
    every Spark ``metadata`` file (nested models, such as a cross-validator's, have their own)."""
    classes = []
    for leaf in _leaves(layout):
        cls = str(leaf.get("class", ""))
        if leaf.get("kind") == "xgboost":
            if not (cls.startswith("xgboost.spark.") and cls.rsplit(".", 1)[-1] in _XGBOOST_MODELS):
                classes.append(cls)
        elif leaf.get("kind") != "jvm":
            raise WrongModelError(f"the Spark model has a stage of unknown kind {leaf.get('kind')!r}")
    for name, data in files.items():
        if PurePosixPath(name).name == "metadata":
            try:
                cls = str(json.loads(data.split(b"\n", 1)[0]).get("class", ""))
            except (ValueError, AttributeError):
                raise WrongModelError(f"the Spark model's {name} is not Spark ML metadata") from None
            if not cls.startswith(_SPARK_PREFIX):
                classes.append(cls)
    untrusted = sorted({c for c in classes if c not in trusted})
    if untrusted:
        raise UsageError(f"the Spark model has stages of classes that are not trusted: {untrusted}",
                         hint="if you trust them, pass trusted=[...] (--trust NAME) naming each")


def _load_xgboost(entry: Mapping[str, Any], booster: bytes) -> Any:
    from ppml.ml.xgboost import rebuild

    spark_models = require("xgboost.spark", "ml")
    model = getattr(spark_models, entry["class"].rsplit(".", 1)[-1])()
    model._resetUid(entry["uid"])
    model._setDefault(**without_placeholders(entry.get("defaults")))
    model._set(**without_placeholders(entry.get("params")))
    params = model._gen_xgb_params_dict(gen_xgb_sklearn_estimator_param=True)
    model._xgb_sklearn_model = rebuild(model._xgb_cls().__name__, params, booster)
    return model
