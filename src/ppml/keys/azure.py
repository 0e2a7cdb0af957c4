"""The ``azure`` backend: primary keys in Azure Key Vault (BigDL's name ``AzureKeyManagementService`` is an alias).

The primary key is a Key Vault key: RSA 3072 by default, ``RSA-HSM`` with ``hsm=True`` (Premium vaults), or
an ``oct-HSM`` AES-256 key on a Managed HSM (``managed_hsm=True``, implied by a ``*.managedhsm.azure.net``
URL). Rotation adds a key version (``KeyClient.rotate_key``); every older version keeps unwrapping the data
keys it wrapped. The vault, the identity and the errors are those of :mod:`ppml.keys.azure_vault`.

Wrapped keys
------------
``WrappedKey(kms="azure", key=<versionless key id>, version=<Key Vault key version>, wrapped=<alg> || <wrap>)``
where the key id is ``https://<vault>.vault.azure.net/keys/<name>`` (so a reference reads
``azure:https://kv1.vault.azure.net/keys/tpch#v3f2a…`` and names its vault), ``<alg>`` is one byte
(``0x01`` RSA-OAEP-256, ``0x02`` A256KW) and ``<wrap>`` is exactly what Key Vault's ``wrapKey`` returns.
Unwrapping needs only the ``unwrapKey`` permission on that key version (plus ``get`` where it is granted,
which the SDK uses to cache the public key); wrapping needs ``get`` (to find the current version and its
public key) and, for ``oct-HSM`` keys, ``wrapKey``. A key or version that is gone while unwrapping is a
:class:`~ppml.errors.KeyAccessError` naming the key version.

RSA keys wrap locally with the public key through ``CryptographyClient``; only unwrapping reaches the vault.
Symmetric keys go to the service directly: for an ``oct-HSM`` key, whose key material Key Vault never
returns, ``CryptographyClient.wrap_key`` "wraps" locally with a random key of its own (azure-keyvault-keys
4.11), producing a blob that nothing can unwrap.
"""

from __future__ import annotations

import base64
import datetime as _dt
import threading
from typing import Any, NoReturn
from urllib.parse import quote

from azure.keyvault.keys import KeyClient, KeyOperation, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import AlreadyExistsError, ConfigError, KeyAccessError, NotFoundError, PpmlError, UsageError
from ppml.keys.azure_vault import (
    OBJECT_VERSION,
    UNPICKLABLE_BECAUSE,
    VAULT_ENV,
    check_object_name,
    connect,
    split_object_id,
    vault_name,
)
from ppml.keys.kms import KeyManagementService, KeyVersionInfo, PrimaryKeyInfo

__all__ = ["DEFAULT_KEY_SIZE", "AzureKeyVaultKms"]

DEFAULT_KEY_SIZE = 3072
_RSA_TYPES = ("RSA", "RSA-HSM")
_OCT_TYPES = ("oct", "oct-HSM")
_ALG_BYTES = {b"\x01": "RSA-OAEP-256", b"\x02": "A256KW"}
_ALG_PREFIX = {alg: prefix for prefix, alg in _ALG_BYTES.items()}
_CLIENT_CACHE_LIMIT = 256


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _enum_value(value: object) -> str:
    return str(getattr(value, "value", value))


def _iso(moment: _dt.datetime | None) -> str:
    return moment.astimezone(_dt.timezone.utc).replace(microsecond=0).isoformat() if moment else ""


class AzureKeyVaultKms(KeyManagementService):
    """Primary keys in Azure Key Vault (or Managed HSM); data keys wrapped through ``CryptographyClient``.

    Parameters
    ----------
    vault
        Vault name (``kv1``), host or ``https://`` URL; default ``$PPML_AZURE_VAULT``.
    credential
        An ``azure.core.credentials.TokenCredential``; default ``DefaultAzureCredential``, created on first
        use (``managed_identity_client_id``/``workload_identity_client_id`` = ``client_id``).
    client_id
        Client id of the user-assigned managed identity or workload identity; default ``$AZURE_CLIENT_ID``.
    connection_verify
        CA bundle path (or ``False``) for TLS to the vault; default: the system's, or ``$REQUESTS_CA_BUNDLE``.
    verify_challenge_resource
        Check that the vault's authentication challenge names the vault's own domain before sending a token.
        Leave it on; only tests against a loopback server turn it off.
    hsm
        Create ``RSA-HSM`` keys (Premium vaults) instead of software-protected ``RSA`` keys.
    managed_hsm
        The vault is a Managed HSM: create ``oct-HSM`` AES-256 keys and wrap with ``A256KW``. Default: whether
        the URL is ``*.managedhsm.azure.net``.
    key_size
        RSA key size for new keys: 2048, 3072 (default) or 4096.
    retry_total, retry_backoff_factor, retry_backoff_max, **client_options
        Passed to the SDK clients (azure-core retry policy, timeouts, transport options). Throttled (429)
        and failed requests are retried with exponential back-off, honouring ``Retry-After``.
    """

    name = "azure"

    def __init__(self, vault: str | None = None, credential: Any = None, *, client_id: str | None = None,
                 connection_verify: str | bool | None = None, verify_challenge_resource: bool = True,
                 hsm: bool = False, managed_hsm: bool | None = None, key_size: int = DEFAULT_KEY_SIZE,
                 **client_options: Any) -> None:
        if key_size not in (2048, 3072, 4096):
            raise ConfigError(f"RSA key size must be 2048, 3072 or 4096, not {key_size}")
        self._conn = connect(vault, credential, managed_hsm=bool(managed_hsm), client_id=client_id,
                             connection_verify=connection_verify,
                             verify_challenge_resource=verify_challenge_resource, **client_options)
        self.vault_url = self._conn.url
        self.managed_hsm = self._conn.managed_hsm if managed_hsm is None else bool(managed_hsm)
        self.hsm = hsm
        self.key_size = key_size
        self._keys: KeyClient | None = None
        self._crypto: dict[tuple[str, str], CryptographyClient] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AzureKeyVaultKms(vault={self.vault_url!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled: {UNPICKLABLE_BECAUSE}")

    # -- clients

    def _client(self) -> KeyClient:
        with self._lock:
            if self._keys is None:
                self._keys = KeyClient(self.vault_url, self._conn.credential(), **self._conn.options)
            return self._keys

    def _crypto_client(self, name: str, version: str, key: KeyVaultKey | None = None) -> CryptographyClient:
        """One ``CryptographyClient`` per key version (it caches the public key after its first use)."""
        with self._lock:
            client = self._crypto.get((name, version))
            if client is None:
                if len(self._crypto) >= _CLIENT_CACHE_LIMIT:
                    self._crypto.clear()
                target: KeyVaultKey | str = key if key is not None else self._versioned(name, version)
                client = CryptographyClient(target, self._conn.credential(), **self._conn.options)
                self._crypto[(name, version)] = client
            return client

    # -- names

    def key_identifier(self, key_name: str) -> str:
        """The versionless key id stored as ``WrappedKey.key``: ``https://<vault>/keys/<name>``."""
        return f"{self.vault_url}/keys/{self._key_name(key_name)}"

    def canonical_key(self, key: str) -> str:
        """``https://<vault host, lowercase>/keys/<name, lowercase>``: Key Vault ignores the case of names."""
        try:
            vault, name, _ = split_object_id(key, "keys")
        except ValueError:
            return key
        return f"{vault}/keys/{name.lower()}"

    def _versioned(self, name: str, version: str) -> str:
        return f"{self.vault_url}/keys/{name}/{version}"

    def _key_name(self, key_name: str) -> str:
        """A key name, or a versionless key id of this vault (what ``WrappedKey.key`` holds)."""
        if isinstance(key_name, str) and "://" in key_name:
            try:
                vault, name, version = split_object_id(key_name, "keys")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            if vault != self.vault_url:
                raise UsageError(f"{key_name} is in Key Vault {vault}, not in {self.vault_url}",
                                 hint="use --vault with that vault, or give the key by name")
            if version:
                raise UsageError(f"{key_name} names a key version; give the key (its name or versionless URL)",
                                 hint="new data keys are always wrapped by the key's current version")
            return name
        return check_object_name(key_name, "key")

    # -- primary keys

    def _get(self, name: str, version: str | None = None) -> KeyVaultKey:
        subject = f"Key Vault key {self.vault_url}/keys/{name}" + (f"/{version}" if version else "")
        return self._conn.call(
            lambda: self._client().get_key(name, version), kind="keys", permission="get", subject=subject,
            key_id=self._versioned(name, version) if version else self.key_identifier(name),
            missing=lambda: NotFoundError(
                f"no key {name!r}" + (f" version {version}" if version else "") + f" in Key Vault {self.vault_url}",
                hint=f"create it with: ppml keys init --kms azure --vault {vault_name(self.vault_url)} --key-name "
                     f"{name}  (or az keyvault key create --vault-name {vault_name(self.vault_url)} -n {name} "
                     "--kty RSA --size 3072)"))

    def _info(self, name: str) -> PrimaryKeyInfo:
        latest = self._get(name)
        subject = f"the versions of {self.key_identifier(name)}"
        versions = self._conn.call(lambda: list(self._client().list_properties_of_key_versions(name)),
                                   kind="keys", permission="list", subject=subject)
        versions.sort(key=lambda p: (p.created_on or _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)))
        infos = tuple(KeyVersionInfo(p.version or "", "enabled" if p.enabled else "disabled", _iso(p.created_on))
                      for p in versions)
        kty = _enum_value(latest.key_type)
        details: dict[str, object] = {"vault": self.vault_url, "key_id": self.key_identifier(name), "kty": kty,
                                      "hsm": kty.endswith("-HSM")}
        if kty in _RSA_TYPES and latest.key.n:
            details["key_size"] = 8 * len(latest.key.n)
        return PrimaryKeyInfo(self.name, name, latest.properties.version or "", infos, details)

    def create_key(self, key_name: str) -> PrimaryKeyInfo:
        name = self._key_name(key_name)
        try:
            self._get(name)
        except NotFoundError:
            pass
        else:
            raise AlreadyExistsError(f"Key Vault key {self.key_identifier(name)} already exists",
                                     hint="rotate it with 'ppml keys rotate --kms azure' instead")
        operations = [KeyOperation.wrap_key, KeyOperation.unwrap_key]
        tags = {"created-by": "ppml", "purpose": "ppml-primary-key"}
        client = self._client()
        if self.managed_hsm:
            create = lambda: client.create_oct_key(name, size=256, hardware_protected=True,  # noqa: E731
                                                   key_operations=operations, tags=tags)
        else:
            create = lambda: client.create_rsa_key(name, size=self.key_size, hardware_protected=self.hsm,  # noqa: E731
                                                   key_operations=operations, tags=tags)
        self._conn.call(create, kind="keys", permission="create", subject=f"new key {self.key_identifier(name)}")
        return self._info(name)

    def rotate_key(self, key_name: str) -> PrimaryKeyInfo:
        name = self._key_name(key_name)
        self._conn.call(lambda: self._client().rotate_key(name), kind="keys", permission="rotate",
                        subject=f"Key Vault key {self.key_identifier(name)}",
                        missing=lambda: NotFoundError(f"no key {name!r} in Key Vault {self.vault_url} to rotate"))
        return self._info(name)

    def describe_key(self, key_name: str) -> PrimaryKeyInfo:
        return self._info(self._key_name(key_name))

    def retire_version(self, key_name: str, version: str) -> PrimaryKeyInfo:
        """Disable one key version: Key Vault deletes only whole keys, and a disabled version unwraps nothing.

        Callers check first that no file still uses it. Needs the 'update' key permission.
        """
        name = self._key_name(key_name)
        self._get(name, version)  # names a missing version clearly
        if self._get(name).properties.version == version:
            raise UsageError(f"version {version} is the current version of {self.key_identifier(name)}",
                             hint="rotate the key first, then retire the old version")
        self._conn.call(lambda: self._client().update_key_properties(name, version, enabled=False), kind="keys",
                        permission="update", subject=f"Key Vault key {self._versioned(name, version)}")
        return self._info(name)

    def list_keys(self) -> list[PrimaryKeyInfo]:
        names = self._conn.call(lambda: sorted(p.name for p in self._client().list_properties_of_keys() if p.name),
                                kind="keys", permission="list", subject=f"the keys of {self.vault_url}")
        return [self._info(name) for name in names]

    # -- wrapping

    def _remote(self, operation: str, name: str, version: str, alg: str, value: bytes) -> bytes:
        """``wrapkey``/``unwrapkey`` sent to the vault (symmetric keys never wrap locally)."""
        from azure.core.rest import HttpRequest

        request = HttpRequest("POST", f"/keys/{quote(name)}/{quote(version)}/{operation}",
                              json={"alg": alg, "value": _b64url(value)})
        response = self._client().send_request(request)
        response.raise_for_status()
        return _unb64url(str(response.json()["value"]))

    def wrap(self, key: DataKey, key_name: str) -> WrappedKey:
        name = self._key_name(key_name)
        current = self._get(name)
        version = current.properties.version or ""
        kty = _enum_value(current.key_type)
        reference = f"azure:{self.key_identifier(name)}#v{version}"
        material = key.unsafe_material()
        if kty in _RSA_TYPES:
            alg = "RSA-OAEP-256"
            crypto = self._crypto_client(name, version, current)
            wrapped = self._conn.call(lambda: crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, material).encrypted_key,
                                      kind="keys", permission="wrapKey", subject=reference,
                                      key_id=self._versioned(name, version))
        elif kty in _OCT_TYPES:
            alg = "A256KW"
            wrapped = self._conn.call(lambda: self._remote("wrapkey", name, version, alg, material),
                                      kind="keys", permission="wrapKey", subject=reference,
                                      key_id=self._versioned(name, version))
        else:
            raise ConfigError(f"{self.key_identifier(name)} is an {kty} key; ppml wraps data keys with RSA or "
                              "oct-HSM keys", hint="create an RSA key: ppml keys init --kms azure --key-name NAME")
        return WrappedKey(self.name, self.key_identifier(name), version, _ALG_PREFIX[alg] + wrapped)

    def unwrap(self, wrapped: WrappedKey) -> DataKey:
        reference = wrapped.reference
        if wrapped.kms != self.name:
            raise KeyAccessError(f"the data key {reference} was not wrapped by Azure Key Vault")
        try:
            vault, name, version_in_url = split_object_id(wrapped.key, "keys")
        except ValueError:
            raise KeyAccessError(f"{reference} does not name a Key Vault key",
                                 hint="the header or data-key file was modified") from None
        if vault != self.vault_url:
            raise KeyAccessError(
                f"{reference} is a key of Key Vault {vault}, but this process is configured for {self.vault_url}",
                hint=f"use --vault {vault_name(vault)} (or {VAULT_ENV}) to unwrap it; ppml only sends tokens to the "
                     "vaults it is configured for")
        version = wrapped.version
        if version_in_url or not OBJECT_VERSION.match(version or ""):
            raise KeyAccessError(f"{reference} does not name one key version",
                                 hint="the header or data-key file was modified")
        alg = _ALG_BYTES.get(wrapped.wrapped[:1])
        body = wrapped.wrapped[1:]
        if alg is None or not body:
            raise KeyAccessError(f"the wrapped key for {reference} is malformed")

        def missing() -> PpmlError:
            return KeyAccessError(f"primary key {reference} does not exist in Key Vault {self.vault_url}",
                                  hint="the key or this version was deleted (recover it with az keyvault key recover "
                                       "if soft delete is on), or the header was modified")

        def bad_request(code: str) -> PpmlError:
            return KeyAccessError(f"Key Vault could not unwrap the data key with {reference} ({code})",
                                  hint="the wrapped key was modified, or belongs to another key version")

        if alg == "RSA-OAEP-256":
            crypto = self._crypto_client(name, version)
            material = self._conn.call(lambda: crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, body).key,
                                       kind="keys", permission="unwrapKey", subject=reference, missing=missing,
                                       bad_request=bad_request, key_id=self._versioned(name, version))
        else:
            material = self._conn.call(lambda: self._remote("unwrapkey", name, version, alg, body), kind="keys",
                                       permission="unwrapKey", subject=reference, missing=missing,
                                       bad_request=bad_request, key_id=self._versioned(name, version))
        if not material:
            raise KeyAccessError(f"Key Vault returned an empty key for {reference}")
        return DataKey(material)
