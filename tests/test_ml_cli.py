"""``ppml ml`` end to end, as a user runs it: train, score, inspect and their refusals with their exit codes.

The data is scikit-learn's breast cancer set, encrypted; estimators are the in-process ones (the Spark ones
run through the same code, tested in test_ml_spark.py with a shared session). Also: a model released only
by a key broker to an attested process, refused to one whose claims its policy does not accept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the ML tests need ppml[ml]")

import ppml  # noqa: E402

PPML = [sys.executable, "-m", "ppml.cli.main"]
PASSPHRASE = "ml cli passphrase"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from keystores import make_data_key, make_keystore
    from sklearn.datasets import load_breast_cancer

    root = tmp_path_factory.mktemp("ml-cli")
    kms = make_keystore(root / "ks.json", PASSPHRASE, "default")
    make_data_key(kms, "default", root / "dk.json")
    make_keystore(root / "other.json", "another passphrase", "default")
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    keys = ppml.KeySettings(keystore=str(root / "ks.json"), passphrase="env:PPML_KEYSTORE_PASSWORD")
    os.environ.setdefault("PPML_KEYSTORE_PASSWORD", PASSPHRASE)
    for name, rows in (("train", frame.iloc[:450]), ("new", frame.iloc[450:]),
                       ("narrow", frame.iloc[450:].drop(columns=["mean_radius"]))):
        with ppml.open(root / name / "part-0.csv.ppml", "wb", data_key=root / "dk.json", keys=keys) as f:
            rows.to_csv(f, index=False)
    return root


def _run(workspace: Path, *args: str, keystore: str = "ks.json", passphrase: str = PASSPHRASE):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PPML_")},
           "PPML_KEYSTORE": str(workspace / keystore), "PPML_KEYSTORE_PASSWORD": passphrase, "COLUMNS": "80"}
    return subprocess.run([*PPML, *args], cwd=workspace, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(workspace) -> dict:
    result = _run(workspace, "ml", "train", "train", "--label", "target", "-e", "xgboost:classifier",
                  "-o", "model.ppml", "--data-key", "dk.json", "-p", "n_estimators=20", "-p", "max_depth=3", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_train_reports_held_out_quality_and_saves_an_encrypted_model(trained, workspace):
    assert trained["kind"] == "ml.train" and trained["library"] == "xgboost"
    assert trained["rows"] == {"train": 360, "test": 90}
    assert trained["metrics"]["accuracy"] > 0.9 and trained["metrics"]["auc"] > 0.95
    assert ppml.inspect(workspace / "model.ppml").format == "aes_gcm_stream"
    shown = json.loads(_run(workspace, "ml", "inspect", "model.ppml", "--json").stdout)
    assert shown["digest"] == trained["digest"] and shown["label"] == {"name": "target", "type": "bigint"}
    assert len(shown["features"]) == 30 and shown["features"][0] == {"name": "mean_radius", "type": "double"}
    provenance = shown["provenance"]
    assert provenance["inputs"][0]["files"][0]["file_id"] == ppml.inspect(
        workspace / "train" / "part-0.csv.ppml").facts["file_id"]
    assert provenance["params"] == {"estimator": "xgboost:classifier", "n_estimators": 20, "max_depth": 3,
                                    "seed": 42, "test_fraction": 0.2}
    human = _run(workspace, "ml", "inspect", "model.ppml")
    assert "xgboost (ubjson)" in human.stdout and "mean_radius double" in human.stdout


def test_score_writes_encrypted_predictions(trained, workspace):
    result = _run(workspace, "ml", "score", "model.ppml", "new", "-o", "scores", "--data-key", "dk.json", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 119 and report["metrics"]["accuracy"] > 0.9
    assert all(p.name.endswith(".ppml") for p in (workspace / "scores").iterdir())
    keys = ppml.KeySettings(keystore=str(workspace / "ks.json"), passphrase="env:PPML_KEYSTORE_PASSWORD")
    scores = ppml.ml.read_pandas(workspace / "scores", keys=keys)
    assert list(scores.columns[-2:]) == ["prediction", "probability"] and len(scores) == 119
    again = _run(workspace, "ml", "score", "model.ppml", "new", "-o", "scores", "--data-key", "dk.json")
    assert again.returncode == 6 and "--force" in again.stderr


def test_refusals_have_their_exit_codes(trained, workspace):
    data = (workspace / "model.ppml").read_bytes()
    (workspace / "tampered.ppml").write_bytes(data[:-40] + bytes([data[-40] ^ 1]) + data[-39:])
    cases = [
        (("ml", "score", "tampered.ppml", "new", "-o", "x", "--data-key", "dk.json"), {}, 4, "segment"),
        (("ml", "inspect", "model.ppml"), {"keystore": "other.json", "passphrase": "another passphrase"}, 5, ""),
        (("ml", "score", "model.ppml", "narrow", "-o", "x", "--data-key", "dk.json"), {}, 2, "mean_radius"),
        (("ml", "inspect", "train/part-0.csv.ppml"), {}, 2, "not a ppml model file"),
        (("ml", "train", "train", "--label", "nope", "-e", "xgboost:classifier", "-o", "x.ppml", "--data-key",
          "dk.json"), {}, 2, "no label column"),
        (("ml", "train", "train", "--label", "target", "-e", "keras:mlp", "-o", "x.ppml", "--data-key",
          "dk.json"), {}, 2, "unknown estimator"),
    ]
    for args, options, code, message in cases:
        result = _run(workspace, *args, **options)
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr
        assert not (workspace / "x").exists() and not (workspace / "x.ppml").exists()


def test_help_reads_at_80_columns(workspace):
    for command in ("train", "score", "inspect", "estimators", "demo"):
        shown = _run(workspace, "ml", command, "--help").stdout
        assert "Example" in shown and max(len(line) for line in shown.splitlines()) <= 80
    listed = json.loads(_run(workspace, "ml", "estimators", "--json").stdout)["estimators"]
    assert {"name": "spark:gbt-classifier", "class": "pyspark.ml.classification.GBTClassifier",
            "task": "classification", "engine": "spark"} in listed


def test_a_model_is_released_only_to_attested_processes(workspace, tmp_path):
    pytest.importorskip("uvicorn")
    from broker_harness import SIMULATED_POLICY, BrokerProcess
    from keystores import make_data_key
    from sklearn.linear_model import LogisticRegression

    with BrokerProcess(tmp_path / "broker", policies=[SIMULATED_POLICY]) as broker:
        make_data_key(broker.keystore, "tpch", tmp_path / "dk.json")  # the policy releases local:tpch* only
        trainer = ppml.KeySettings(keystore=str(tmp_path / "broker" / "keys" / "keystore.json"),
                                   passphrase=f"file:{tmp_path / 'broker' / 'keys' / 'passphrase'}")
        model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
        ppml.ml.save(model, tmp_path / "model.ppml", data_key=tmp_path / "dk.json", keys=trainer)

        def scorer(claims: dict) -> subprocess.CompletedProcess:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PPML_")}
            env.update(HOME=str(tmp_path), PPML_BROKER_URL=broker.url, PPML_BROKER_CA=str(broker.pki.ca_path),
                       PPML_BROKER_ATTESTER="simulated", PPML_BROKER_ATTESTER_SETTINGS=json.dumps({"claims": claims}))
            code = ("import ppml; m = ppml.ml.load('model.ppml', library='sklearn'); "
                    "print(m.predict([[0.0], [1.0]]).tolist())")
            return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=120)

        allowed = scorer({"app": "tpch"})
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.strip() == "[0, 1]"
        denied = scorer({"app": "exfiltrator"})
        assert denied.returncode != 0 and "KeyAccessError" in denied.stderr and "denied" in denied.stderr
        decisions = [e["decision"] for e in broker.audit_entries() if e.get("event") == "release"]
        assert decisions[-2:] == ["allow", "deny"]


def test_the_demo_trains_on_encrypted_and_plaintext_data_alike(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPML_")}
    result = subprocess.run([*PPML, "ml", "demo", "--dir", str(tmp_path / "demo"), "--no-spark", "--json"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "Breast Cancer Wisconsin" in report["data_set"]
    assert [r["estimator"] for r in report["rows"]] == ["sklearn:random-forest-classifier",
                                                        "xgboost:classifier", "lightgbm:classifier"]
    for row in report["rows"]:
        assert row["same_quality"] and row["encrypted"]["accuracy"] > 0.9, row
        assert ppml.inspect(row["model"]).format == "aes_gcm_stream"
    assert report["score"]["rows"] == 569 and report["score"]["metrics"]["accuracy"] > 0.9
