"""The checks every local key store passes when it is read or created: each field, and the KDF's limits.

A damaged or hand-edited file is a :class:`~ppml.errors.ConfigError` naming the field at fault, never a
traceback. Argon2id settings, given or read, must lie within :data:`KDF_LIMITS` and reach OWASP's minimum
work (memory × iterations ≥ 35 MiB): a weaker setting makes the passphrase cheap to guess from a copy of
the file, a larger one exhausts memory.
"""

from __future__ import annotations

import base64
import binascii

from ppml.errors import ConfigError

__all__ = ["KDF_LIMITS", "check_kdf", "check_store", "SCHEMA", "STORE_ID_SIZE"]

SCHEMA = "ppml.keystore/1"
STORE_ID_SIZE = 16
# (lowest, highest) per Argon2id parameter; memory_kib * iterations must also reach _MIN_KDF_WORK
# (OWASP's equivalent minimum settings: 46 MiB x 1, 19 MiB x 2 ... 7 MiB x 5).
KDF_LIMITS = {"memory_kib": (7 * 1024, 4 * 1024 * 1024), "iterations": (1, 64), "lanes": (1, 64)}
_MIN_KDF_WORK = 35 * 1024
_STATES = ("enabled", "retired")


def check_kdf(kdf: object, *, where: str) -> dict:
    """The Argon2id parameters, refused with ConfigError outside :data:`KDF_LIMITS`."""
    if not isinstance(kdf, dict) or kdf.get("name") != "argon2id":
        name = kdf.get("name") if isinstance(kdf, dict) else kdf
        raise ConfigError(f"{where}: unsupported key store KDF {name!r}", hint="ppml key stores use argon2id")
    for name, (low, high) in KDF_LIMITS.items():
        value = kdf.get(name)
        if type(value) is not int or not low <= value <= high:
            raise ConfigError(f"{where}: kdf {name} is {value!r}, outside {low}..{high}",
                              hint="a weaker setting makes the passphrase cheap to guess; a larger one exhausts memory")
    if kdf["memory_kib"] * kdf["iterations"] < _MIN_KDF_WORK:
        raise ConfigError(f"{where}: kdf memory_kib x iterations is {kdf['memory_kib'] * kdf['iterations']}, below "
                          f"{_MIN_KDF_WORK}", hint="raise iterations or memory_kib (OWASP's Argon2id minimum)")
    return kdf


def _b64_field(value: object, *, where: str, name: str) -> bytes:
    try:
        if not isinstance(value, str):
            raise ValueError
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise ConfigError(f"{where}: {name} is not base64 text", hint="restore the key store from its backup") from None


def check_store(doc: object, *, where: str) -> dict:
    """The parsed key store, every field checked, so a damaged file is a ConfigError naming the field."""
    def bad(what: str) -> ConfigError:
        return ConfigError(f"{where} is not a valid ppml key store ({what})",
                           hint="restore the key store from its backup")

    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("schema") != SCHEMA:
        raise bad(f"schema {doc.get('schema')!r} is not {SCHEMA!r}")
    store_id = doc.get("store_id")
    if not isinstance(store_id, str) or len(store_id) != 2 * STORE_ID_SIZE or any(
            c not in "0123456789abcdef" for c in store_id):
        raise bad(f"store_id {store_id!r} is not {STORE_ID_SIZE} bytes of lowercase hex")
    check_kdf(doc.get("kdf"), where=where)
    _b64_field(doc["kdf"].get("salt"), where=where, name="kdf salt")
    _b64_field(doc.get("check"), where=where, name="check")
    keys = doc.get("keys")
    if not isinstance(keys, dict):
        raise bad("keys is not a mapping")
    for name, entry in keys.items():
        versions = entry.get("versions") if isinstance(entry, dict) else None
        if not isinstance(versions, dict) or not versions or entry.get("current") not in versions:
            raise bad(f"key {name!r} has no versions mapping or no current version among them")
        for version, state in versions.items():
            if not version.isdigit() or not isinstance(state, dict) or state.get("state") not in _STATES:
                raise bad(f"key {name!r} version {version!r} is not a numbered version with a state "
                          f"({' or '.join(_STATES)})")
            if state["state"] == "enabled":
                _b64_field(state.get("material"), where=where, name=f"material of {name} v{version}")
    return doc
