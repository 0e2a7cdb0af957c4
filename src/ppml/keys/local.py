"""The embedded default KMS: primary keys in a passphrase-protected key store file.

Key store file (JSON, mode 0600)::

    {"schema": "ppml.keystore/1", "store_id": hex16,
     "kdf": {"name": "argon2id", "salt": b64, "iterations": 3, "lanes": 4, "memory_kib": 65536},
     "check": b64(nonce || AES-256-GCM(kek, nonce, "ppml keystore check", aad="ppml.keystore/1|check")),
     "keys": {NAME: {"created": iso, "current": "2",
                     "versions": {"1": {"state": "enabled"|"retired", "created": iso,
                                        "material": b64(nonce || AES-256-GCM(kek, nonce, key,
                                                        aad="ppml.keystore/1|NAME|1"))}}}}}

The key-encryption key ``kek`` is Argon2id(passphrase). A wrapped data key is
``0x01 || store_id || nonce || AES-256-GCM(primary key, nonce, data key, aad="ppml/local/v1|NAME|VERSION")``;
the store id lets an error say that a file belongs to another key store.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import AlreadyExistsError, ConfigError, KeyAccessError, NotFoundError, UsageError
from ppml.keys import secure_files
from ppml.keys.kms import KeyManagementService, KeyVersionInfo, PrimaryKeyInfo

__all__ = ["LocalKms", "default_keystore_path", "PASSWORD_ENV", "KEYSTORE_ENV", "DEFAULT_KEY_NAME"]

PASSWORD_ENV = "PPML_KEYSTORE_PASSWORD"
KEYSTORE_ENV = "PPML_KEYSTORE"
DEFAULT_KEY_NAME = "default"
_SCHEMA = "ppml.keystore/1"
_WRAP_VERSION = b"\x01"
_STORE_ID_SIZE = 16
_NONCE = 12
DEFAULT_KDF = {"name": "argon2id", "iterations": 3, "lanes": 4, "memory_kib": 64 * 1024}
Passphrase = str | Callable[[], str] | None


def default_keystore_path() -> Path:
    """``$PPML_KEYSTORE``, else ``$XDG_CONFIG_HOME/ppml/keystore.json`` (``~/.config`` by default)."""
    if os.environ.get(KEYSTORE_ENV):
        return Path(os.environ[KEYSTORE_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "ppml" / "keystore.json"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _seal(key: bytes, plaintext: bytes, aad: str) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad.encode())


def _open(key: bytes, sealed: bytes, aad: str) -> bytes:
    return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], aad.encode())


class LocalKms(KeyManagementService):
    """Primary keys in a local key store file, protected by a passphrase.

    Parameters
    ----------
    keystore
        Path of the key store file; default :func:`default_keystore_path`.
    passphrase
        The passphrase, or a callable returning it (called at most once, only when a key is needed), or
        ``None`` to read ``$PPML_KEYSTORE_PASSWORD``.
    """

    name = "local"

    def __init__(self, keystore: str | os.PathLike | None = None, passphrase: Passphrase = None) -> None:
        self.path = Path(keystore).expanduser() if keystore else default_keystore_path()
        self._passphrase_source = passphrase
        self._kek: bytes | None = None
        self._keys: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        self._doc: dict | None = None

    def __repr__(self) -> str:
        return f"LocalKms(keystore={str(self.path)!r})"

    def __reduce__(self):
        raise TypeError("LocalKms cannot be pickled: open it where it is used")

    # -- the key store file ------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def _load(self) -> dict:
        if self._doc is None:
            if not self.path.exists():
                raise NotFoundError(
                    f"no key store at {self.path}",
                    hint=f"create one with 'ppml keys init', or point {KEYSTORE_ENV} / --keystore at yours",
                )
            secure_files.check_private(self.path, what="key store")
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
                if doc.get("schema") != _SCHEMA:
                    raise ValueError(f"schema {doc.get('schema')!r} is not {_SCHEMA!r}")
                bytes.fromhex(doc["store_id"])
                doc["keys"], doc["kdf"], doc["check"]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{self.path} is not a valid ppml key store ({exc})",
                                  hint="restore the key store from its backup") from None
            self._doc = doc
        return self._doc

    def _save(self) -> None:
        secure_files.write_private(self.path, (json.dumps(self._doc, indent=2) + "\n").encode(), replace=True)

    def _passphrase(self) -> str:
        source = self._passphrase_source
        value = source() if callable(source) else source
        if value is None and os.environ.get(PASSWORD_ENV):
            from ppml.keys.settings import read_secret_source  # settings builds on this module

            value = read_secret_source(f"env:{PASSWORD_ENV}", what="key store passphrase")
        if not value:
            raise KeyAccessError(
                f"the key store {self.path} needs its passphrase",
                hint=f"set {PASSWORD_ENV} or pass --passphrase-file FILE (in Python: LocalKms(passphrase=...)); "
                     "an empty passphrase is refused",
            )
        return value

    @staticmethod
    def _derive(passphrase: str, kdf: dict) -> bytes:
        if kdf.get("name") != "argon2id":
            raise ConfigError(f"unsupported key store KDF {kdf.get('name')!r}")
        return Argon2id(salt=base64.b64decode(kdf["salt"]), length=32, iterations=int(kdf["iterations"]),
                        lanes=int(kdf["lanes"]), memory_cost=int(kdf["memory_kib"])).derive(passphrase.encode())

    def _key_encryption_key(self) -> bytes:
        if self._kek is None:
            doc = self._load()
            kek = self._derive(self._passphrase(), doc["kdf"])
            try:
                _open(kek, base64.b64decode(doc["check"]), f"{_SCHEMA}|check")
            except InvalidTag:
                raise KeyAccessError(f"wrong passphrase for the key store {self.path}",
                                     hint=f"check {PASSWORD_ENV} or the passphrase you typed") from None
            self._kek = kek
        return self._kek

    def create_store(self, *, kdf: dict | None = None) -> None:
        """Create an empty key store file (mode 0600); refuses to overwrite one."""
        if self.path.exists():
            raise AlreadyExistsError(f"a key store already exists at {self.path}",
                                     hint="use it as it is, or choose another path with --keystore")
        params = {**DEFAULT_KDF, **(kdf or {}), "salt": _b64(os.urandom(16))}
        kek = self._derive(self._passphrase(), params)
        self._doc = {
            "schema": _SCHEMA,
            "store_id": os.urandom(_STORE_ID_SIZE).hex(),
            "kdf": params,
            "check": _b64(_seal(kek, b"ppml keystore check", f"{_SCHEMA}|check")),
            "keys": {},
        }
        self._kek = kek
        secure_files.write_private(self.path, (json.dumps(self._doc, indent=2) + "\n").encode())

    # -- primary keys ------------------------------------------------------------------------------

    def _entry(self, key_name: str) -> dict:
        keys = self._load()["keys"]
        if key_name not in keys:
            raise NotFoundError(
                f"no primary key {key_name!r} in the key store {self.path}",
                hint="known keys: " + (", ".join(sorted(keys)) or "none; create one with 'ppml keys init'"),
            )
        return keys[key_name]

    def _info(self, key_name: str) -> PrimaryKeyInfo:
        entry = self._entry(key_name)
        versions = tuple(KeyVersionInfo(v, e["state"], e["created"])
                         for v, e in sorted(entry["versions"].items(), key=lambda kv: int(kv[0])))
        return PrimaryKeyInfo(self.name, key_name, entry["current"], versions,
                              {"keystore": str(self.path), "store_id": self._load()["store_id"]})

    def _add_version(self, key_name: str, version: str) -> None:
        entry = self._load()["keys"].setdefault(key_name, {"created": _now(), "versions": {}})
        material = os.urandom(32)
        entry["versions"][version] = {
            "state": "enabled",
            "created": _now(),
            "material": _b64(_seal(self._key_encryption_key(), material, f"{_SCHEMA}|{key_name}|{version}")),
        }
        entry["current"] = version
        self._keys[(key_name, version)] = material
        self._save()

    def create_key(self, key_name: str = DEFAULT_KEY_NAME) -> PrimaryKeyInfo:
        if not key_name or any(c in key_name for c in "#|/\\ ") or len(key_name) > 128:
            raise UsageError(f"invalid key name {key_name!r}",
                             hint="use 1 to 128 characters, none of them '#', '|', '/', '\\' or a space")
        with self._lock:
            if key_name in self._load()["keys"]:
                raise AlreadyExistsError(f"primary key {key_name!r} already exists in {self.path}",
                                         hint="rotate it with 'ppml keys rotate' instead")
            self._add_version(key_name, "1")
        return self._info(key_name)

    def rotate_key(self, key_name: str = DEFAULT_KEY_NAME) -> PrimaryKeyInfo:
        with self._lock:
            entry = self._entry(key_name)
            self._add_version(key_name, str(max(int(v) for v in entry["versions"]) + 1))
        return self._info(key_name)

    def describe_key(self, key_name: str = DEFAULT_KEY_NAME) -> PrimaryKeyInfo:
        return self._info(key_name)

    def list_keys(self) -> list[PrimaryKeyInfo]:
        return [self._info(name) for name in sorted(self._load()["keys"])]

    def retire_version(self, key_name: str, version: str) -> PrimaryKeyInfo:
        """Destroy one version's material. Callers check first that no file still uses it."""
        with self._lock:
            entry = self._entry(key_name)
            if version not in entry["versions"]:
                raise NotFoundError(f"primary key {key_name!r} has no version {version}")
            if version == entry["current"]:
                raise UsageError(f"version {version} is the current version of {key_name!r}",
                                 hint="rotate the key first, then retire the old version")
            entry["versions"][version] = {"state": "retired", "created": entry["versions"][version]["created"]}
            self._keys.pop((key_name, version), None)
            self._save()
        return self._info(key_name)

    def _material(self, key_name: str, version: str) -> bytes:
        with self._lock:
            cached = self._keys.get((key_name, version))
            if cached is not None:
                return cached
            reference = f"local:{key_name}#v{version}"
            found = self._load()["keys"].get(key_name, {}).get("versions", {}).get(version)
            if found is None:  # another process may have rotated the key since this one read the store
                self._doc = None
            found = self._entry(key_name)["versions"].get(version)
            if found is None:
                raise KeyAccessError(f"primary key {reference} does not exist in the key store {self.path}")
            if found["state"] != "enabled":
                raise KeyAccessError(f"primary key {reference} has been retired in {self.path}",
                                     hint="data still wrapped by it cannot be opened; restore a key store "
                                          "backup from before the retirement")
            try:
                material = _open(self._key_encryption_key(), base64.b64decode(found["material"]),
                                 f"{_SCHEMA}|{key_name}|{version}")
            except InvalidTag:
                raise KeyAccessError(f"primary key {reference} in {self.path} is damaged",
                                     hint="restore the key store from its backup") from None
            self._keys[(key_name, version)] = material
            return material

    # -- wrapping ----------------------------------------------------------------------------------

    def wrap(self, key: DataKey, key_name: str = DEFAULT_KEY_NAME) -> WrappedKey:
        version = self._entry(key_name)["current"]
        primary = self._material(key_name, version)
        store_id = bytes.fromhex(self._load()["store_id"])
        sealed = _seal(primary, key.unsafe_material(), f"ppml/local/v1|{key_name}|{version}")
        return WrappedKey(self.name, key_name, version, _WRAP_VERSION + store_id + sealed)

    def unwrap(self, wrapped: WrappedKey) -> DataKey:
        blob = wrapped.wrapped
        store_id = self._load()["store_id"]
        if blob[:1] != _WRAP_VERSION or len(blob) < 1 + _STORE_ID_SIZE + _NONCE + 16:
            raise KeyAccessError(f"the wrapped key for {wrapped.reference} is malformed")
        if blob[1 : 1 + _STORE_ID_SIZE].hex() != store_id:
            raise KeyAccessError(
                f"{wrapped.reference} was wrapped by key store {blob[1:1 + _STORE_ID_SIZE].hex()[:12]}…, "
                f"but {self.path} is key store {store_id[:12]}…",
                hint=f"point --keystore or {KEYSTORE_ENV} at the key store this data was encrypted with",
            )
        primary = self._material(wrapped.key, wrapped.version)
        try:
            material = _open(primary, blob[1 + _STORE_ID_SIZE :], f"ppml/local/v1|{wrapped.key}|{wrapped.version}")
        except InvalidTag:
            raise KeyAccessError(f"the wrapped data key does not authenticate under {wrapped.reference}",
                                 hint="the header or data-key file was modified") from None
        return DataKey(material)
