"""Leak check for machine learning: no plaintext training data or model bytes on any disk, at any point.

A child process trains and scores on encrypted data carrying a canary: a Spark ML pipeline (the canary is a
category, so Spark's shuffle carries it and the fitted StringIndexer's labels hold it), scikit-learn, XGBoost
and LightGBM models (the canary names a feature, so the model bytes hold it) and a PyTorch state dict (a
tensor whose bytes are the canary). Every model is saved with ppml.ml, loaded back, and the Spark one scores
the data into encrypted output. Meanwhile fanotify (tests/fswatch.py) reads every file closed after writing
on every persistent file system of the machine -- including files deleted at once, such as shuffle files --
and the canary must be in none of them. A control file written in plaintext on purpose must be caught,
which shows the watch works.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

pytest.importorskip("pyspark")
pytest.importorskip("sklearn", reason="the ML tests need ppml[ml]")
import fswatch  # noqa: E402

pytestmark = [pytest.mark.xdist_group("cluster"), pytest.mark.slow]

CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import ppml
    from pyspark.sql import SparkSession
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import StringIndexer, VectorAssembler

    root, canary, control = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    keys = ppml.KeySettings(keystore=str(root / "ks.json"), passphrase=f"file:{root / 'ks.pass'}")
    dk = str(root / "dk.json")
    builder = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
               .config("spark.local.dir", str(root / "spark-local")).config("spark.sql.shuffle.partitions", "2"))
    ctx = ppml.PPMLContext(builder, keys=keys, data_key=dk)
    schema = "x1 double, x2 double, tag string, y double"
    frame = ctx.read().option("header", True).schema(schema).csv(str(root / "enc"))
    pipeline = Pipeline(stages=[StringIndexer(inputCol="tag", outputCol="tag_i"),
                                VectorAssembler(inputCols=["x1", "x2", "tag_i"], outputCol="features"),
                                LogisticRegression(labelCol="y", maxIter=5)])
    model = pipeline.fit(frame)
    ppml.ml.save(model, root / "spark.ppml", data_key=dk, keys=keys, inputs=[root / "enc"])
    back = ppml.ml.load(root / "spark.ppml", keys=keys)
    scored = back.transform(frame).select("tag", "prediction")
    ctx.write(scored).mode("overwrite").option("header", True).csv(str(root / "scores"))
    ctx.spark.stop()

    import lightgbm, torch, xgboost
    from sklearn.ensemble import RandomForestClassifier
    data = ppml.ml.read_pandas(root / "enc", keys=keys).rename(columns={"x1": canary})
    x, y = data[[canary, "x2"]], data["y"]
    models = {"sklearn": RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y),
              "xgboost": xgboost.XGBClassifier(n_estimators=3, n_jobs=1).fit(x, y),
              "lightgbm": lightgbm.LGBMClassifier(n_estimators=3, verbose=-1, n_jobs=1).fit(x, y),
              "torch": {"canary": torch.tensor(list(canary.encode()), dtype=torch.uint8)}}
    for name, fitted in models.items():
        ppml.ml.save(fitted, root / f"{name}.ppml", data_key=dk, keys=keys)
        ppml.ml.load(root / f"{name}.ppml", keys=keys)
    (root / "control.txt").write_text(control)  # written in plaintext on purpose: the watch must see it
    print("done")
""")


def test_no_plaintext_data_or_model_bytes_reach_a_disk(tmp_path):
    reason = fswatch.available()
    if reason:
        pytest.skip(f"fanotify is not available here ({reason}); this test needs root on Linux")
    from keystores import make_data_key, make_keystore

    import ppml

    canary, control = f"CANARY{uuid.uuid4().hex}", f"CONTROL{uuid.uuid4().hex}"
    kms = make_keystore(tmp_path / "ks.json", "leak test passphrase", "default", passphrase_file=tmp_path / "ks.pass")
    make_data_key(kms, "default", tmp_path / "dk.json")
    keys = ppml.KeySettings(keystore=str(tmp_path / "ks.json"), passphrase=f"file:{tmp_path / 'ks.pass'}")
    rows = "".join(f"{i % 7}.5,{i % 5},{canary}_{'ab'[i % 2]},{i % 2}\n" for i in range(400))
    with ppml.open(tmp_path / "enc" / "part-0.csv.ppml", "wb", data_key=tmp_path / "dk.json", keys=keys) as f:
        f.write(f"x1,x2,tag,y\n{rows}".encode())  # the data exists only encrypted
    for folder in ("home", "tmp"):
        (tmp_path / folder).mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"),
           "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}

    watch = fswatch.PersistentWrites([canary.encode(), control.encode()])
    watch.start()
    try:
        result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), canary, control], env=env,
                                capture_output=True, text=True, timeout=600)
    finally:
        watch.stop()
    assert result.returncode == 0, result.stderr[-4000:]
    assert not watch.overflowed, "fanotify lost events: the machine was too busy for the watch to be complete"

    assert watch.hits == {str(tmp_path / "control.txt"): [control.encode()]}
    names = {Path(p).name for p in watch.written if Path(p).parent == tmp_path}
    for name in ("spark", "sklearn", "xgboost", "lightgbm", "torch"):  # staged under a temporary name, then renamed
        assert any(f"{name}.ppml" in n for n in names), f"the watch did not see {name}.ppml written: {names}"
    assert any("spark-local" in p and "shuffle" in p for p in watch.written), "no shuffle file was written"
    assert any(p.startswith(str(tmp_path / "scores")) and "part-" in p for p in watch.written)
    assert len(watch.written) > 20  # Spark's own files too: jars unpacked, block manager, shuffle
    # The canary really was in the data, the scores and the model.
    assert canary in ppml.ml.read_pandas(tmp_path / "scores", keys=keys)["tag"].iloc[0]
    with ppml.open(tmp_path / "torch.ppml", keys=keys) as model_file:
        assert canary.encode() in model_file.read()
    assert canary not in result.stdout + result.stderr
