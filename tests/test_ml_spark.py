"""Spark ML on encrypted data: pipelines trained from ppml's data source, saved and loaded without a disk.

One local Spark session (tests/conftest.py) serves every test here. Models come back predicting exactly as
before; stage classes outside the allow-list and Python-only stages are refused; a staging folder on a disk
file system is refused; the training and scoring jobs of ``ppml ml`` run end to end on encrypted data.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pyspark")
pytest.importorskip("sklearn", reason="the ML tests need ppml[ml]")

import ppml  # noqa: E402
from ppml.errors import ConfigError, SchemaMismatchError, UsageError  # noqa: E402

pytestmark = pytest.mark.xdist_group("spark")


@pytest.fixture
def encrypted_frame(spark_session, spark_keys, tmp_path):
    """A small encrypted CSV data set and the DataFrame ppml's source reads from it."""
    rows = "".join(f"{i % 7 + 0.5},{(i * 3) % 11},{'abc'[i % 3]},{int(i % 7 > 3)}\n" for i in range(300))
    with ppml.open(tmp_path / "enc" / "part-0.csv.ppml", "wb", data_key=spark_keys["data_key"],
                   keys=spark_keys["settings"]) as f:
        f.write(f"x1,x2,tag,y\n{rows}".encode())
    ctx = ppml.PPMLContext(spark_session, keys=spark_keys["settings"], data_key=spark_keys["data_key"])
    frame = ctx.read().option("header", True).schema("x1 double, x2 double, tag string, y double").csv(
        str(tmp_path / "enc"))
    return ctx, frame


def _pipeline(estimator):
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import OneHotEncoder, StringIndexer, VectorAssembler

    return Pipeline(stages=[StringIndexer(inputCol="tag", outputCol="tag_i"),
                            OneHotEncoder(inputCols=["tag_i"], outputCols=["tag_v"]),
                            VectorAssembler(inputCols=["x1", "x2", "tag_v"], outputCol="features"), estimator])


def _predictions(model, frame):
    return [(r.prediction, tuple(r.probability)) for r in model.transform(frame).orderBy("x1", "x2", "tag").collect()]


@pytest.mark.parametrize("kind", ["logistic-regression", "gbt", "nested", "xgboost"])
def test_spark_models_come_back_predicting_the_same(kind, encrypted_frame, spark_keys, tmp_path):
    from pyspark.ml import PipelineModel
    from pyspark.ml.classification import GBTClassifier, LogisticRegression

    _, frame = encrypted_frame
    if kind == "xgboost":
        from xgboost.spark import SparkXGBClassifier

        estimator = SparkXGBClassifier(label_col="y", num_workers=1, n_estimators=5, random_state=1)
    elif kind == "gbt":
        estimator = GBTClassifier(labelCol="y", maxIter=3, seed=1)
    else:
        estimator = LogisticRegression(labelCol="y", maxIter=10)
    model = _pipeline(estimator).fit(frame)
    if kind == "nested":
        model = PipelineModel([PipelineModel(model.stages[:2]), PipelineModel(model.stages[2:])])
    info = ppml.ml.save(model, tmp_path / "m.ppml", data_key=spark_keys["data_key"], keys=spark_keys["settings"],
                        features=frame.schema, label="y", inputs=[tmp_path / "enc"])
    back = ppml.ml.load(tmp_path / "m.ppml", keys=spark_keys["settings"], library="spark")
    assert isinstance(back, PipelineModel)
    assert _predictions(back, frame) == _predictions(model, frame)
    assert info.format == "spark-ml" and info.features[2] == {"name": "tag", "type": "string"}
    assert info.manifest["versions"]["spark"] == frame.sparkSession.version


def test_stages_of_untrusted_classes_are_refused(encrypted_frame, spark_keys, tmp_path, monkeypatch):
    from pyspark.ml.classification import LogisticRegression

    from ppml.ml.container import read_container, write_container

    _, frame = encrypted_frame
    ppml.ml.save(_pipeline(LogisticRegression(labelCol="y", maxIter=2)).fit(frame), tmp_path / "m.ppml",
                 data_key=spark_keys["data_key"], keys=spark_keys["settings"])
    manifest, files = read_container(tmp_path / "m.ppml", keys=spark_keys["settings"])
    # A key holder writes a stage whose metadata names a class of their choosing: Spark would instantiate it.
    name = next(n for n in files if n.endswith("/metadata") and b"LogisticRegressionModel" in files[n])
    files[name] = files[name].replace(b"org.apache.spark.ml.classification.LogisticRegressionModel", b"com.evil.Stage")
    kept = {k: manifest[k] for k in ("library", "format", "model_class", "versions", "features", "label", "details",
                                     "provenance")}
    write_container(tmp_path / "evil.ppml", kept, files, data_key=spark_keys["data_key"], keys=spark_keys["settings"],
                    force=False)
    with pytest.raises(UsageError, match="com.evil.Stage"):
        ppml.ml.load(tmp_path / "evil.ppml", keys=spark_keys["settings"])


def test_python_only_stages_are_refused(spark_session, spark_keys, tmp_path):
    from pyspark.ml import PipelineModel, Transformer

    class Identity(Transformer):
        def _transform(self, dataset):
            return dataset

    with pytest.raises(UsageError, match="Python-only stages|ppml saves Spark's own"):
        ppml.ml.save(PipelineModel([Identity()]), tmp_path / "m.ppml", data_key=spark_keys["data_key"],
                     keys=spark_keys["settings"], spark=spark_session)
    assert not (tmp_path / "m.ppml").exists()


def test_model_files_are_never_staged_on_a_disk(encrypted_frame, spark_keys, tmp_path, monkeypatch):
    from pyspark.ml.classification import LogisticRegression

    from ppml.ml.staging import file_system_of, memory_folder

    assert file_system_of("/dev/shm") in ("tmpfs", "ramfs") or pytest.skip("no tmpfs at /dev/shm here")
    with memory_folder() as folder:
        assert file_system_of(folder) in ("tmpfs", "ramfs") and oct(folder.stat().st_mode)[-3:] == "700"
    assert not folder.exists()
    _, frame = encrypted_frame
    model = _pipeline(LogisticRegression(labelCol="y", maxIter=2)).fit(frame)
    monkeypatch.setenv("PPML_ML_STAGING", str(tmp_path))  # a folder on the disk: refused, nothing written
    with pytest.raises(ConfigError, match="no memory file system") as raised:
        ppml.ml.save(model, tmp_path / "m.ppml", data_key=spark_keys["data_key"], keys=spark_keys["settings"])
    assert "PPML_ML_STAGING" in raised.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dk.json", "enc", "keystore.pass", "ks.json"]


def test_train_and_score_jobs_on_encrypted_data(spark_session, encrypted_frame, spark_keys, tmp_path):
    from ppml.ml import jobs
    from ppml.ml.estimators import estimator

    spec = jobs.DataSpec((str(tmp_path / "enc"),))
    keys = spark_keys["settings"]
    with pytest.raises(SchemaMismatchError, match="not numeric"):
        jobs.train(spec, estimator=estimator("spark:logistic-regression"), label="y", out=str(tmp_path / "m.ppml"),
                   data_key=spark_keys["data_key"], keys=keys, spark=spark_session)
    result = jobs.train(spec, estimator=estimator("spark:gbt-classifier"), label="y", features=["x1", "x2"],
                        out=str(tmp_path / "m.ppml"), data_key=spark_keys["data_key"], keys=keys, spark=spark_session,
                        params={"maxIter": 5})
    assert result.metrics["accuracy"] > 0.9 and result.rows["train"] + result.rows["test"] == 300
    assert result.info.label == {"name": "y", "type": "bigint"}
    scored = jobs.score(tmp_path / "m.ppml", spec, out=str(tmp_path / "scores"), data_key=spark_keys["data_key"],
                        keys=keys, spark=lambda: spark_session)
    assert scored.metrics["accuracy"] > 0.9
    frame = ppml.ml.read_pandas(tmp_path / "scores", keys=keys)
    assert list(frame.columns) == ["x1", "x2", "tag", "y", "prediction", "probability"] and len(frame) == 300
    assert (frame["prediction"] == frame["y"]).mean() == pytest.approx(scored.metrics["accuracy"])
