"""Key settings: which key management services a process uses, as values that travel without any secret.

One :class:`KeySettings` builds every key ring (command line, Spark driver and executors, ``PPMLContext``, the
key broker), so every backend works everywhere and every secret is read the same way. Secrets are named by
*source*, resolved by each process for itself: ``env:VAR`` (an environment variable of that process),
``file:PATH`` (a file it can read, e.g. a mounted Kubernetes secret), ``azure-secret:VAULT/NAME`` (a Key Vault
secret, read with the process's own Azure identity; also ``azure-secret:https://VAULT.vault.azure.net/secrets/
NAME[/VERSION]``) or ``-`` (standard input, for the command line only). A secret read from any source loses
its trailing line break and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppml.errors import ConfigError, KeyAccessError, UsageError
from ppml.keys.keyring import KeyRing
from ppml.keys.kms import KeyManagementService, open_kms

__all__ = ["KeySettings", "read_secret_source", "PRIMARY_KMS", "BIGDL_KMS_TYPES"]

#: Key management services that hold primary keys (create, rotate, wrap new data keys).
PRIMARY_KMS = ("local", "azure", "pkcs11")
#: BigDL's key types (its ``spark.bigdl.kms.type`` names) -> the ppml backend that reads their data keys.
BIGDL_KMS_TYPES = {
    "plaintext": "bigdl-plaintext",
    "SimpleKeyManagementService": "SimpleKeyManagementService",
    "AzureKeyManagementService": "bigdl-azure",
}
_BIGDL_ALIASES = {"plaintext": "plaintext", "plain": "plaintext", "bigdl-plaintext": "plaintext",
                  "simplekeymanagementservice": "SimpleKeyManagementService", "simplekms": "SimpleKeyManagementService",
                  "simple": "SimpleKeyManagementService", "azurekeymanagementservice": "AzureKeyManagementService",
                  "bigdl-azure": "AzureKeyManagementService"}
_PASSPHRASE_FILE_ENV = "PPML_KEYSTORE_PASSWORD_FILE"
_PASSPHRASE_SOURCE_ENV = "PPML_KEYSTORE_PASSWORD_SOURCE"
_PASSPHRASE_ENV = "PPML_KEYSTORE_PASSWORD"
_VAULT_ENV = "PPML_AZURE_VAULT"
_TOKEN_ENV = "PPML_PKCS11_TOKEN"
_BROKER_ENV = {"broker_url": "PPML_BROKER_URL", "broker_ca": "PPML_BROKER_CA",
               "broker_attester": "PPML_BROKER_ATTESTER", "broker_attester_settings": "PPML_BROKER_ATTESTER_SETTINGS"}


def _trim(value: str) -> str:
    return value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value


def read_secret_source(source: str, *, what: str) -> str:
    """A secret from ``env:VAR``, ``file:PATH``, ``azure-secret:VAULT/NAME`` or ``-``; a literal value is refused.

    The trailing line break (``\\n`` or ``\\r\\n``) is dropped, nothing else: a passphrase may start or end
    with spaces.
    """
    if source == "-":
        return _trim(sys.stdin.readline())
    kind, _, rest = source.partition(":")
    if kind == "azure-secret" and rest:
        try:
            from ppml.keys.azure_secrets import read_secret_reference
        except ImportError as exc:
            raise ConfigError(f"the {what} source {source} needs the Azure SDK, which is not installed ({exc.name})",
                              hint="pip install 'ppml[azure]'") from None
        return _trim(read_secret_reference(rest, what=what))
    if kind == "env" and rest:
        if not os.environ.get(rest):
            raise ConfigError(f"the environment variable {rest} for the {what} is not set in this process")
        return _trim(os.environ[rest])
    if kind == "file" and rest:
        path = Path(rest).expanduser()
        try:
            return _trim(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"the {what} file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the {what} file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    raise UsageError(
        f"the {what} must be given as env:VAR, file:PATH, azure-secret:VAULT/NAME or '-', not as a value",
        hint="secrets on a command line or in Spark options end up in shell history, process lists and "
             "the Spark UI; e.g. export PRIMARY_KEY=...; then name it as env:PRIMARY_KEY",
    )


def _canonical_bigdl(name: str) -> str:
    found = _BIGDL_ALIASES.get(name.lower())
    if found is None:
        raise UsageError(f"unknown BigDL key type {name!r}",
                         hint="choose plaintext, SimpleKeyManagementService or AzureKeyManagementService")
    return found


_RINGS: dict[tuple[KeySettings, bytes], KeyRing] = {}
_RINGS_LOCK = threading.Lock()
_MAX_RINGS = 32


def _environment_digest() -> bytes:
    """What this process's environment says about keys, as a digest (the ring depends on it; values may be
    secret, so only their digest is kept)."""
    relevant = sorted((k, v) for k, v in os.environ.items() if k.startswith("PPML_") or k == "AZURE_CLIENT_ID")
    return hashlib.sha256(repr(relevant).encode()).digest()


@dataclass(frozen=True)
class KeySettings:
    """Which key management services a process may use, and where their secrets come from.

    Every field is optional; ``None`` means this process's environment default, resolved by each process
    for itself (an executor reads its own ``$PPML_KEYSTORE_PASSWORD``). No field is ever a secret value.

    Parameters
    ----------
    kms
        The primary key management service, which creates and rotates primary keys and wraps new data keys:
        ``local`` (the key store, default), ``azure`` (Azure Key Vault) or ``pkcs11`` (an HSM token). BigDL's
        names are accepted and become :attr:`bigdl_kms`: ``SimpleKeyManagementService``, and
        ``AzureKeyManagementService`` when :attr:`bigdl_primary_key` is given (Key Vault otherwise).
    keystore, passphrase
        The local key store (default ``$PPML_KEYSTORE`` or ``~/.config/ppml/keystore.json``) and the source of
        its passphrase (default: ``$PPML_KEYSTORE_PASSWORD_FILE``, ``$PPML_KEYSTORE_PASSWORD_SOURCE``, then the
        value of ``$PPML_KEYSTORE_PASSWORD``).
    azure_vault, azure_client_id, azure_hsm
        The Key Vault (name or URL; default ``$PPML_AZURE_VAULT``), the client id of the managed or workload
        identity each process uses (default ``$AZURE_CLIENT_ID``), and whether keys created there are
        ``RSA-HSM`` keys (Premium vaults). Each process authenticates with its own credential.
    pkcs11_token, pkcs11_pin, pkcs11_module
        The HSM token label (default ``$PPML_PKCS11_TOKEN``), the source of its user PIN (default
        ``env:PPML_PKCS11_PIN``) and the PKCS#11 library (default ``$PPML_PKCS11_MODULE``, else SoftHSM2's).
    broker_url, broker_ca, broker_attester, broker_attester_settings
        A key broker (``https://...``; default ``$PPML_BROKER_URL``) that releases data keys to this process
        after attestation, the CA file verifying its certificate, the attester that makes this process's
        evidence and that attester's settings as JSON text (defaults: ``$PPML_BROKER_CA``,
        ``$PPML_BROKER_ATTESTER``, ``$PPML_BROKER_ATTESTER_SETTINGS``). When set, every wrapped key goes to it.
    bigdl_kms, bigdl_primary_key, insecure_allow_simple_kms
        BigDL PPML's key type (``plaintext``, ``SimpleKeyManagementService`` or ``AzureKeyManagementService``)
        and its primary key: for ``plaintext`` the source of the base64 key (``env:VAR``, ``file:PATH``); for
        the others BigDL's primary-key file (for Azure also the Key Vault key URL itself). SimpleKMS gives no
        confidentiality and is refused unless ``insecure_allow_simple_kms``.
    """

    kms: str = "local"
    keystore: str | None = None
    passphrase: str | None = None
    azure_vault: str | None = None
    azure_client_id: str | None = None
    azure_hsm: bool = False
    pkcs11_token: str | None = None
    pkcs11_pin: str | None = None
    pkcs11_module: str | None = None
    broker_url: str | None = None
    broker_ca: str | None = None
    broker_attester: str | None = None
    broker_attester_settings: str | None = None
    bigdl_kms: str | None = None
    bigdl_primary_key: str | None = None
    insecure_allow_simple_kms: bool = False

    def __post_init__(self) -> None:
        kms = (self.kms or "local").lower()
        if kms in _BIGDL_ALIASES and kms not in ("plaintext", "plain"):
            bigdl = _canonical_bigdl(kms)
            if bigdl == "AzureKeyManagementService" and not self.bigdl_primary_key:
                kms = "azure"  # BigDL's name for Key Vault, when no BigDL primary-key file is given
            else:
                if self.bigdl_kms and _canonical_bigdl(self.bigdl_kms) != bigdl:
                    raise UsageError(f"kms {self.kms} and bigdl_kms {self.bigdl_kms} name two BigDL key types")
                object.__setattr__(self, "bigdl_kms", bigdl)
                kms = "local"
        if kms not in PRIMARY_KMS:
            raise UsageError(f"{self.kms!r} is not a key management service that holds primary keys",
                             hint="choose local, azure or pkcs11 (BigDL key types go to bigdl_kms)")
        object.__setattr__(self, "kms", kms)
        if self.bigdl_kms is not None:
            object.__setattr__(self, "bigdl_kms", _canonical_bigdl(self.bigdl_kms))
            if not self.bigdl_primary_key:
                raise UsageError(f"the BigDL key type {self.bigdl_kms} needs its primary key",
                                 hint="give it with --bigdl-key (bigdl_primary_key): a source such as env:VAR for "
                                      "plaintext keys, BigDL's primary-key file for the others")
        elif self.bigdl_primary_key:
            raise UsageError("a BigDL primary key was given without its key type",
                             hint="name it with --bigdl-kms plaintext|SimpleKeyManagementService|"
                                  "AzureKeyManagementService")
        if self.insecure_allow_simple_kms and self.bigdl_kms != "SimpleKeyManagementService":
            raise UsageError("allowing the insecure SimpleKeyManagementService makes sense only with that key type")

    def replace(self, **changes: Any) -> KeySettings:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def with_environment_broker(self) -> KeySettings:
        """A copy whose unset broker settings are taken from this process's ``$PPML_BROKER_*`` variables.

        For settings that travel to other processes (Spark executors), which may not share this environment.
        """
        found = {name: os.environ[env] for name, env in _BROKER_ENV.items()
                 if getattr(self, name) is None and os.environ.get(env)}
        return self.replace(**found) if found else self

    # -- the backends --------------------------------------------------------------------------------

    def passphrase_reader(self, *, prompt: Callable[[], str] | None = None) -> Callable[[], str]:
        """A callable giving the key store passphrase from the first source that has one, else ``prompt``."""
        def read() -> str:
            if self.passphrase:
                return read_secret_source(self.passphrase, what="key store passphrase")
            if os.environ.get(_PASSPHRASE_FILE_ENV):
                return read_secret_source("file:" + os.environ[_PASSPHRASE_FILE_ENV], what="key store passphrase")
            if os.environ.get(_PASSPHRASE_SOURCE_ENV):
                return read_secret_source(os.environ[_PASSPHRASE_SOURCE_ENV], what="key store passphrase")
            if os.environ.get(_PASSPHRASE_ENV):
                return read_secret_source(f"env:{_PASSPHRASE_ENV}", what="key store passphrase")
            if prompt is not None:
                return prompt()
            raise KeyAccessError("the key store passphrase is needed and no source gives it",
                                 hint=f"set {_PASSPHRASE_ENV}, pass --passphrase-file FILE, or give a source "
                                      "(passphrase='file:/run/secrets/keystore-pass')")

        return read

    def _open(self, name: str, *, prompt: Callable[[], str] | None = None,
              required: bool = True) -> KeyManagementService | None:
        if name == "local":
            return open_kms("local", keystore=self.keystore, passphrase=self.passphrase_reader(prompt=prompt))
        if name == "azure":
            vault = self.azure_vault or os.environ.get(_VAULT_ENV)
            if not vault:
                if not required:
                    return None
                raise UsageError("Azure Key Vault needs the vault: --vault NAME (or URL)",
                                 hint=f"or set {_VAULT_ENV}=NAME; e.g. --vault kv1 for https://kv1.vault.azure.net")
            return open_kms("azure", vault=vault, client_id=self.azure_client_id, hsm=self.azure_hsm)
        if name == "pkcs11":
            token = self.pkcs11_token or os.environ.get(_TOKEN_ENV)
            if not token:
                if not required:
                    return None
                raise UsageError(f"the HSM token is not named: --token LABEL (or ${_TOKEN_ENV})",
                                 hint="PPML_PKCS11_PIN (or --pin SOURCE) gives the user PIN; PPML_PKCS11_MODULE "
                                      "names the PKCS#11 library if it is not SoftHSM2")
            return open_kms("pkcs11", token=token, pin=self.pkcs11_pin, module=self.pkcs11_module)
        return None

    def primary(self, *, prompt: Callable[[], str] | None = None) -> KeyManagementService:
        """The key management service that holds primary keys (:attr:`kms`): the one :meth:`keyring` uses too,
        so a passphrase is asked for and a key store read once."""
        backend = self.keyring(prompt=prompt).backend(self.kms)
        if backend is None:
            backend = self._open(self.kms, prompt=prompt)  # raises, naming what is missing
        assert backend is not None
        return backend

    def bigdl(self) -> KeyManagementService | None:
        """The BigDL key type's backend, or ``None`` when no BigDL key type is configured."""
        if self.bigdl_kms is None:
            return None
        source = str(self.bigdl_primary_key)
        if self.bigdl_kms == "plaintext":
            text = read_secret_source(source, what="BigDL plaintext primary key")
            try:
                material = base64.b64decode(text.strip(), validate=True)
            except binascii.Error:
                raise ConfigError("the BigDL plaintext primary key is not valid base64") from None
            return open_kms("bigdl-plaintext", primary_key=material)
        if self.bigdl_kms == "SimpleKeyManagementService":
            return open_kms("SimpleKeyManagementService", primary_key_file=source,
                            allow_insecure=self.insecure_allow_simple_kms)
        location = {"key_url": source} if source.startswith("https://") else {"primary_key_file": source}
        return open_kms("bigdl-azure", client_id=self.azure_client_id, **location)

    def data_key_backend(self, *, prompt: Callable[[], str] | None = None) -> KeyManagementService:
        """Where new data keys come from: the BigDL key type when one is configured, else :meth:`primary`."""
        return self.bigdl() or self.primary(prompt=prompt)

    def uses_broker(self) -> bool:
        """Whether keys come from a key broker, after attestation (here or in this process's environment)."""
        return bool(self.broker_url or os.environ.get(_BROKER_ENV["broker_url"]))

    def broker(self) -> KeyManagementService | None:
        """The key broker client, or ``None`` when no broker URL is set here or in the environment."""
        values = {name: getattr(self, name) or os.environ.get(env) or None for name, env in _BROKER_ENV.items()}
        if not values["broker_url"]:
            return None
        return open_kms("broker", url=values["broker_url"], ca=values["broker_ca"],
                        attester=values["broker_attester"] or "",
                        attester_settings=values["broker_attester_settings"])

    def backends(self, names: Iterable[str]) -> dict[str, KeyManagementService]:
        """The primary-key services named (``local``, ``azure``, ``pkcs11``), each opened once."""
        opened: dict[str, KeyManagementService] = {}
        for name in names:
            if name not in PRIMARY_KMS:
                raise ConfigError(f"unknown key management service {name!r}", hint="choose local, azure or pkcs11")
            backend = self._open(name)
            assert backend is not None
            opened[backend.name] = backend
        return opened

    def keyring(self, *, prompt: Callable[[], str] | None = None) -> KeyRing:
        """This process's key ring for these settings and environment (built once, so backends open once).

        The broker comes first when configured, then the BigDL key type; an envelope naming another service
        opens it on first use (the local key store always; Key Vault and the HSM when their vault or token is
        known). ``prompt`` asks for the key store passphrase when no source gives it.
        """
        cache_key = (self, _environment_digest())
        with _RINGS_LOCK:
            ring = _RINGS.get(cache_key)
            if ring is None:
                if len(_RINGS) >= _MAX_RINGS:  # environments that keep changing (tests) must not pile up rings
                    _RINGS.pop(next(iter(_RINGS)))
                configured = [b for b in (self.broker(), self.bigdl()) if b is not None]
                ring = _RINGS[cache_key] = KeyRing(configured, lambda name: self._open(name, prompt=prompt,
                                                                                        required=False))
            return ring

    # -- as options ----------------------------------------------------------------------------------

    #: field -> option name, for data source options and other string maps (case-insensitive on input).
    OPTIONS = {
        "kms": "kms", "keystore": "keystore", "passphrase": "keystorePassword",
        "azure_vault": "azureVault", "azure_client_id": "azureClientId", "azure_hsm": "azureHsm",
        "pkcs11_token": "pkcs11Token", "pkcs11_pin": "pkcs11Pin", "pkcs11_module": "pkcs11Module",
        "broker_url": "brokerUrl", "broker_ca": "brokerCa", "broker_attester": "brokerAttester",
        "broker_attester_settings": "brokerAttesterSettings",
        "bigdl_kms": "bigdlKms", "bigdl_primary_key": "bigdlPrimaryKey",
        "insecure_allow_simple_kms": "insecureAllowSimpleKms",
    }

    def to_options(self) -> dict[str, str]:
        """The settings that differ from the defaults, as string options (none of them secret)."""
        options = {}
        for name, option in self.OPTIONS.items():
            value = getattr(self, name)
            if value in (None, False) or (name == "kms" and value == "local"):
                continue
            options[option] = "true" if value is True else str(value)
        return options

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> KeySettings:
        """Settings from :meth:`to_options` output (option names case-insensitive; other options ignored)."""
        lowered = {str(k).lower(): v for k, v in options.items()}
        values: dict[str, Any] = {}
        for name, option in cls.OPTIONS.items():
            value = lowered.get(option.lower())
            if value is None:
                continue
            field_type = cls.__dataclass_fields__[name].type
            values[name] = str(value).strip().lower() in ("true", "1", "yes", "on") if field_type == "bool" else str(value)
        return cls(**values)

    #: Settings a key broker configuration may give per backend, by backend.
    BROKER_SETTINGS = {
        "local": {"keystore": "keystore", "passphrase": "passphrase"},
        "azure": {"vault": "azure_vault", "client_id": "azure_client_id"},
        "pkcs11": {"token": "pkcs11_token", "pin": "pkcs11_pin", "module": "pkcs11_module"},
    }

    @classmethod
    def from_backend_entries(cls, entries: Iterable[Mapping[str, Any]], *, where: str) -> tuple[KeySettings, list[str]]:
        """Settings from a list of ``{backend: NAME, setting: value...}`` entries (the broker's ``kms`` list).

        Returns the settings and the backend names in order; an unknown backend or setting, or a backend
        listed twice, is a :class:`~ppml.errors.ConfigError` naming ``where``.
        """
        values: dict[str, Any] = {}
        names: list[str] = []
        for entry in entries:
            name = str(entry.get("backend", ""))
            allowed = cls.BROKER_SETTINGS.get(name)
            if allowed is None:
                raise ConfigError(f"{where}: unknown kms backend {name!r}", hint="choose local, azure or pkcs11")
            if name in names:
                raise ConfigError(f"{where}: the kms backend {name!r} is listed twice")
            unknown = sorted(set(entry) - set(allowed) - {"backend"})
            if unknown:
                raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)} for the {name} backend",
                                  hint="allowed: " + ", ".join(sorted(allowed)))
            values.update({allowed[k]: str(v) for k, v in entry.items() if k != "backend" and v is not None})
            names.append(name)
        return cls(**values), names
