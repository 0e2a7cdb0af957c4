"""Machine learning on encrypted data: models encrypted at rest, training data read without plaintext on disk.

::

    import ppml

    keys = ppml.KeySettings()
    train = ppml.ml.read_pandas("enc/train", keys=keys)                 # encrypted CSV or Parquet files
    model = sklearn.linear_model.LogisticRegression().fit(train[features], train["label"])
    ppml.ml.save(model, "model.ppml", data_key="dk.json", keys=keys, label="label", inputs=["enc/train"])
    model = ppml.ml.load("model.ppml", keys=keys, library="sklearn")    # authenticated before it is parsed

Every library's model is saved in that library's own format inside one encrypted file with an authenticated
manifest (:mod:`ppml.ml.container`): scikit-learn (skops), XGBoost (UBJSON), LightGBM (text), PyTorch state
dicts (safetensors) and Spark ML pipeline models (Spark's format, written on a memory file system).
:class:`EncryptedCsvDataset` streams encrypted CSV files into PyTorch with bounded memory.
Nothing here is imported with ``import ppml``, and no library is imported before it is used.
"""

from __future__ import annotations

from ppml.registry import lazy_exports

__all__ = ["save", "load", "inspect", "ModelInfo", "read_arrow", "read_pandas", "EncryptedCsvDataset", "LIBRARIES"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "save": "ppml.ml.models",
    "load": "ppml.ml.models",
    "inspect": "ppml.ml.models",
    "ModelInfo": "ppml.ml.models",
    "read_arrow": "ppml.ml.data",
    "read_pandas": "ppml.ml.data",
    "EncryptedCsvDataset": "ppml.ml.datasets",
    "LIBRARIES": "ppml.ml.library",
})
