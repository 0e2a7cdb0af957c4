"""ppml: privacy-preserving big-data analytics.

Data stays encrypted at rest under data keys that a key management service wraps; jobs decrypt it only
inside the process that needs it and write their results encrypted. The safe recipes are here::

    import ppml

    keys = ppml.KeySettings()                         # the default key store; or kms="azure", broker_url=...
    ppml.create_data_key("dk.json", keys=keys)        # only the wrapped key is saved
    ppml.encrypt("plain/", "enc/", data_key="dk.json", keys=keys)
    with ppml.open("enc/orders.csv.ppml", keys=keys) as f:   # each file's header names its key
        orders = pandas.read_csv(f)
    ppml.verify("enc/", keys=keys).failures           # [] when every byte is authentic

``ppml.PPMLContext`` reads and writes encrypted data from PySpark (needs ``ppml[spark]``);
``ppml.AzureStorageSettings`` names Azure storage credentials by source for it. ``ppml.ml`` trains and scores
on encrypted data and keeps models encrypted at rest (needs ``ppml[ml]``). Raw data keys,
envelopes, key rings and codecs are in :mod:`ppml.hazmat`; errors in :mod:`ppml.errors`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

__all__ = ["open", "encrypt", "decrypt", "verify", "inspect", "create_data_key", "KeySettings",
           "AzureStorageSettings", "PPMLContext", "ml", "__version__"]

# Imported on first use, so that `import ppml` (and the command line's start) stays cheap.
_LAZY = {
    "open": "ppml.io.recipes",
    "encrypt": "ppml.io.recipes",
    "decrypt": "ppml.io.recipes",
    "verify": "ppml.io.recipes",
    "inspect": "ppml.io.recipes",
    "create_data_key": "ppml.io.recipes",
    "KeySettings": "ppml.keys.settings",
    "AzureStorageSettings": "ppml.io.azure",
    "PPMLContext": "ppml.spark.context",
}


def __getattr__(name: str):
    if name == "ml":  # a subpackage, imported on first use like everything else here
        return importlib.import_module("ppml.ml")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
