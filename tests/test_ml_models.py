"""Models encrypted at rest: each library's round trip, and every integrity and refusal claim of ppml.ml.

Models are small (scikit-learn's breast cancer data set, a few trees); what is checked is that a model comes
back predicting exactly as it did, that a tampered, truncated, foreign or mis-keyed file is refused before any
library parses it, and that the manifest records what it promises (features, label, provenance, no key).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ppml
from ppml.errors import (
    IntegrityError,
    KeyAccessError,
    PpmlError,
    SchemaMismatchError,
    UsageError,
    WrongKeyError,
    WrongModelError,
)

pytest.importorskip("sklearn", reason="the ML tests need ppml[ml]: pip install -e '.[ml]'")
sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def ml_keys(tmp_path_factory) -> dict:
    from keystores import make_data_key, make_keystore

    root = tmp_path_factory.mktemp("ml-keys")
    kms = make_keystore(root / "ks.json", "ml test passphrase", "default", passphrase_file=root / "ks.pass")
    key, _ = make_data_key(kms, "default", root / "dk.json")
    other = make_keystore(root / "other.json", "other passphrase", "default", passphrase_file=root / "other.pass")
    make_data_key(other, "default", root / "other-dk.json")
    make_data_key(kms, "default", root / "dk2.json")
    settings = ppml.KeySettings(keystore=str(root / "ks.json"), passphrase=f"file:{root / 'ks.pass'}")
    return {"root": root, "keys": settings,
            "other": ppml.KeySettings(keystore=str(root / "other.json"), passphrase=f"file:{root / 'other.pass'}"),
            "data_key": str(root / "dk.json"), "key": key}


@pytest.fixture(scope="module")
def cancer():
    return sklearn_datasets.load_breast_cancer(return_X_y=True, as_frame=True)


def _sklearn_pipeline(x, y):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)


def _fitted(name, x, y):
    """A small fitted model of each kind, and how to get its predictions."""
    import lightgbm
    import xgboost

    if name == "sklearn":
        return _sklearn_pipeline(x, y), lambda m: m.predict_proba(x)
    if name == "xgboost":
        return (xgboost.XGBClassifier(n_estimators=10, max_depth=3, random_state=1, n_jobs=1).fit(x, y),
                lambda m: m.predict_proba(x))
    if name == "xgboost-booster":
        return (xgboost.train({"objective": "binary:logistic", "seed": 1, "nthread": 1}, xgboost.DMatrix(x, y), 5),
                lambda m: m.predict(xgboost.DMatrix(x)))
    if name == "lightgbm":
        return (lightgbm.LGBMClassifier(n_estimators=10, random_state=1, verbose=-1, n_jobs=1).fit(x, y),
                lambda m: m.predict_proba(x))
    return (lightgbm.train({"objective": "binary", "verbose": -1, "seed": 1, "num_threads": 1},
                           lightgbm.Dataset(x, y), 5), lambda m: m.predict(x))


@pytest.fixture(scope="module")
def sklearn_model_file(ml_keys, cancer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ml-model") / "model.ppml"
    x, y = cancer
    ppml.ml.save(_sklearn_pipeline(x, y), path, data_key=ml_keys["data_key"], keys=ml_keys["keys"], label="target")
    return path


@pytest.mark.parametrize("name", ["sklearn", "xgboost", "xgboost-booster", "lightgbm", "lightgbm-booster"])
def test_models_come_back_predicting_the_same(name, ml_keys, cancer, tmp_path):
    x, y = cancer
    model, predict = _fitted(name, x, y)
    info = ppml.ml.save(model, tmp_path / "m.ppml", data_key=ml_keys["data_key"], keys=ml_keys["keys"],
                        label="target")
    library = name.split("-")[0]
    back, loaded = ppml.ml.load(tmp_path / "m.ppml", keys=ml_keys["keys"], library=library, with_info=True)
    assert type(back) is type(model)
    np.testing.assert_array_equal(predict(back), predict(model))
    assert info.library == loaded.library == library
    # LightGBM replaces spaces in feature names; the manifest records the names the model knows
    expected = [c.replace(" ", "_") for c in x.columns] if library == "lightgbm" else list(x.columns)
    assert [c["name"] for c in loaded.features] == expected
    assert loaded.label == {"name": "target", "type": None}
    assert loaded.digest == info.digest
    assert ppml.inspect(tmp_path / "m.ppml").format == "aes_gcm_stream"


def test_the_model_file_holds_no_plaintext(sklearn_model_file, ml_keys):
    data = sklearn_model_file.read_bytes()
    for needle in (b"skops", b"LogisticRegression", b"mean radius", ppml.__version__.encode() + b'"',
                   ml_keys["key"].unsafe_material()):
        assert needle not in data


def test_the_manifest_records_provenance_and_never_a_key(ml_keys, cancer, tmp_path):
    x, y = cancer
    data = tmp_path / "train"
    for part, rows in enumerate((x.iloc[:300], x.iloc[300:])):
        with ppml.open(data / f"part-{part}.csv.ppml", "wb", data_key=ml_keys["data_key"], keys=ml_keys["keys"]) as f:
            rows.assign(target=y.loc[rows.index]).to_csv(f, index=False)
    frame = ppml.ml.read_pandas(data, keys=ml_keys["keys"])
    assert len(frame) == len(x)
    model = _sklearn_pipeline(frame[list(x.columns)], frame["target"])
    info = ppml.ml.save(model, tmp_path / "m.ppml", data_key=ml_keys["data_key"], keys=ml_keys["keys"],
                        inputs=[data], code="train.py v1", label="target")
    provenance = ppml.ml.inspect(tmp_path / "m.ppml", keys=ml_keys["keys"]).provenance
    assert provenance == info.provenance
    files = provenance["inputs"][0]["files"]
    assert [f["file_id"] for f in files] == [ppml.inspect(p).facts["file_id"] for p in sorted(data.iterdir())]
    assert files[0]["keys"] == ["local:default#v1"]
    assert provenance["keys"]["data_key_id"] == ml_keys["key"].key_id
    assert provenance["code"]["sha256"] == __import__("hashlib").sha256(b"train.py v1").hexdigest()
    assert provenance["params"]["logisticregression__max_iter"] == 500
    assert "data_set" not in provenance["inputs"][0]  # files written one by one: no manifest to name
    text = json.dumps(info.to_json())
    assert ml_keys["key"].unsafe_material().hex() not in text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_altered_byte_is_refused_before_the_library_sees_it(data, sklearn_model_file, ml_keys, tmp_path,
                                                                monkeypatch):
    from ppml.ml.sklearn import SklearnModels

    monkeypatch.setattr(SklearnModels, "restore", lambda *a, **k: pytest.fail("the library saw a tampered file"))
    original = sklearn_model_file.read_bytes()
    offset = data.draw(st.integers(0, len(original) - 1), label="offset")
    flip = data.draw(st.integers(1, 255), label="xor")
    tampered = bytearray(original)
    tampered[offset] ^= flip
    victim = tmp_path / "tampered.ppml"
    victim.write_bytes(bytes(tampered))
    with pytest.raises(PpmlError) as raised:
        ppml.ml.load(victim, keys=ml_keys["keys"])
    # a changed header or wrapped key is an integrity or key failure; a changed body always an integrity one
    assert raised.value.exit_code in (4, 5), raised.value
    assert "mean radius" not in str(raised.value)


@pytest.mark.parametrize("keep", [0, 10, 100, -17, -1])
def test_a_truncated_model_is_refused(keep, sklearn_model_file, ml_keys, tmp_path):
    original = sklearn_model_file.read_bytes()
    victim = tmp_path / "short.ppml"
    victim.write_bytes(original[:keep] if keep >= 0 else original[:len(original) + keep])
    with pytest.raises(IntegrityError):
        ppml.ml.load(victim, keys=ml_keys["keys"])


def test_a_model_needs_its_own_key(sklearn_model_file, ml_keys):
    from ppml.keys.keyring import clear_cache

    clear_cache()  # keys unwrapped by earlier tests stay cached in this process
    with pytest.raises(KeyAccessError) as raised:
        ppml.ml.load(sklearn_model_file, keys=ml_keys["other"])
    assert raised.value.exit_code == 5
    with pytest.raises(WrongKeyError):
        ppml.ml.load(sklearn_model_file, keys=ml_keys["keys"], data_key=ml_keys["root"] / "dk2.json")


def test_a_model_of_another_library_is_refused(sklearn_model_file, ml_keys):
    with pytest.raises(WrongModelError, match="holds a sklearn model") as raised:
        ppml.ml.load(sklearn_model_file, keys=ml_keys["keys"], library="xgboost")
    assert raised.value.exit_code == 2


def test_files_that_are_not_models_are_refused(ml_keys, tmp_path):
    with ppml.open(tmp_path / "data.csv.ppml", "wb", data_key=ml_keys["data_key"], keys=ml_keys["keys"]) as f:
        f.write(b"a,b\n1,2\n")
    with pytest.raises(WrongModelError, match="not a ppml model file"):
        ppml.ml.load(tmp_path / "data.csv.ppml", keys=ml_keys["keys"])
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("ppml-model.json", "{}")
    (tmp_path / "plain.zip").write_bytes(archive.getvalue())
    with pytest.raises(UsageError, match="not encrypted"):
        ppml.ml.load(tmp_path / "plain.zip", keys=ml_keys["keys"])
    (tmp_path / "plain.ppml").write_bytes(archive.getvalue())  # a plaintext file posing as an encrypted one
    with pytest.raises(IntegrityError):
        ppml.ml.load(tmp_path / "plain.ppml", keys=ml_keys["keys"])


def test_unknown_objects_are_refused_by_name(ml_keys, tmp_path):
    with pytest.raises(UsageError, match="cannot save a builtins.dict"):
        ppml.ml.save({"weights": [1, 2]}, tmp_path / "m.ppml", data_key=ml_keys["data_key"], keys=ml_keys["keys"])
    assert not (tmp_path / "m.ppml").exists()


class Doubler:
    """A transformer outside scikit-learn: skops will not rebuild it unless the caller trusts it."""

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        return x * 2

    def get_params(self, deep=True):
        return {}


def test_scikit_learn_objects_outside_the_allow_list_need_trust(ml_keys, cancer, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    x, y = cancer
    model = Pipeline([("double", Doubler()), ("lr", LogisticRegression(max_iter=50))]).fit(x.values, y)
    ppml.ml.save(model, tmp_path / "m.ppml", data_key=ml_keys["data_key"], keys=ml_keys["keys"])
    name = f"{Doubler.__module__}.Doubler"
    with pytest.raises(UsageError, match=name.replace(".", r"\.")):
        ppml.ml.load(tmp_path / "m.ppml", keys=ml_keys["keys"])
    back = ppml.ml.load(tmp_path / "m.ppml", keys=ml_keys["keys"], trusted=[name])
    np.testing.assert_array_equal(back.predict(x.values), model.predict(x.values))


def test_schema_mismatch_is_named(sklearn_model_file, ml_keys, cancer):
    x, _ = cancer
    info = ppml.ml.inspect(sklearn_model_file, keys=ml_keys["keys"])
    info.check(x)
    with pytest.raises(SchemaMismatchError, match=r"missing columns \['mean radius'\]") as raised:
        info.check(x.drop(columns=["mean radius"]), what="scores.csv")
    assert raised.value.exit_code == 2
    typed = ppml.ml.ModelInfo("m", {"features": [{"name": "age", "type": "double"}]})
    typed.check({"age": "bigint"})  # numbers stand for numbers
    with pytest.raises(SchemaMismatchError, match="age"):
        typed.check({"age": "string"})


def test_csv_and_parquet_files_read_as_one_table(ml_keys, tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"a": range(10), "b": [i / 2 for i in range(10)]})
    with ppml.open(tmp_path / "t" / "x.parquet.ppml", "wb", data_key=ml_keys["data_key"], keys=ml_keys["keys"]) as f:
        frame.to_parquet(f)
    with ppml.open(tmp_path / "t" / "y.parquet.ppml", "wb", data_key=ml_keys["data_key"], keys=ml_keys["keys"]) as f:
        frame.to_parquet(f)
    both = ppml.ml.read_pandas(tmp_path / "t", keys=ml_keys["keys"], format="parquet")
    assert len(both) == 20 and list(both.columns) == ["a", "b"]
    with pytest.raises(UsageError, match="unknown CSV options"):
        ppml.ml.read_arrow(tmp_path / "t", keys=ml_keys["keys"], delimiter=";")


def test_training_data_is_checked_against_its_data_set_manifest(ml_keys, tmp_path):
    import shutil

    (tmp_path / "plain").mkdir()
    for part in ("a", "b"):
        (tmp_path / "plain" / f"{part}.csv").write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(50)))
    ppml.encrypt(tmp_path / "plain", tmp_path / "enc", data_key=ml_keys["data_key"], keys=ml_keys["keys"])
    frame = ppml.ml.read_pandas(tmp_path / "enc", keys=ml_keys["keys"])
    assert len(frame) == 100
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(frame[["x"]], frame["y"])
    info = ppml.ml.save(model, tmp_path / "m.ppml", data_key=ml_keys["data_key"], keys=ml_keys["keys"],
                        inputs=[tmp_path / "enc"], label="y")
    data_set = info.provenance["inputs"][0]["data_set"]
    assert data_set["version"] == 1 and data_set["members"] == 2 and len(data_set["manifest_digest"]) == 64

    shutil.copy(tmp_path / "enc" / "b.csv.ppml", tmp_path / "enc" / "a.csv.ppml")  # valid file, same key, wrong place
    with pytest.raises(IntegrityError, match=r"a\.csv\.ppml"):
        ppml.ml.read_pandas(tmp_path / "enc", keys=ml_keys["keys"])
    (tmp_path / "enc" / "a.csv.ppml").unlink()
    with pytest.raises(IntegrityError, match=r"a\.csv\.ppml"):
        ppml.ml.read_pandas(tmp_path / "enc", keys=ml_keys["keys"])
