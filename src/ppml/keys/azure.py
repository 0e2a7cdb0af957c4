"""Azure Key Vault as a key management service, BigDL's Azure data keys, and Key Vault secrets.

Backends
--------
``azure`` (:class:`AzureKeyVaultKms`; BigDL's name ``AzureKeyManagementService`` is an alias)
    The primary key is a Key Vault key: RSA 3072 by default, ``RSA-HSM`` with ``hsm=True`` (Premium
    vaults), or an ``oct-HSM`` AES-256 key on a Managed HSM (``managed_hsm=True``, implied by a
    ``*.managedhsm.azure.net`` URL). Rotation adds a key version (``KeyClient.rotate_key``); every older
    version keeps unwrapping the data keys it wrapped.
``bigdl-azure`` (:class:`BigdlAzureKms`)
    Reads (and writes) the data keys of BigDL PPML's ``AzureKeyManagementService``: the BigDL
    primary-key file holds a Key Vault key URL; an encrypted data key is ``base64(RSA-OAEP-SHA1(32 random
    bytes))``; the data key BigDL's ``aes/cbc/pkcs5padding`` files use is the *string*
    ``base64(32 bytes)``, so the :class:`~ppml.crypto.datakey.DataKey` returned holds its ASCII bytes.

Wrapped keys of the ``azure`` backend
-------------------------------------
``WrappedKey(kms="azure", key=<versionless key id>, version=<Key Vault key version>, wrapped=<alg> || <wrap>)``
where the key id is ``https://<vault>.vault.azure.net/keys/<name>`` (so a reference reads
``azure:https://kv1.vault.azure.net/keys/tpch#v3f2a…`` and names its vault), ``<alg>`` is one byte
(``0x01`` RSA-OAEP-256, ``0x02`` A256KW) and ``<wrap>`` is exactly what Key Vault's ``wrapKey`` returns.
Unwrapping needs only the ``unwrapKey`` permission on that key version (plus ``get`` where it is granted,
which the SDK uses to cache the public key); wrapping needs ``get`` (to find the current version and its
public key) and, for ``oct-HSM`` keys, ``wrapKey``.

RSA keys wrap locally with the public key through ``CryptographyClient``; only unwrapping reaches the vault.
Symmetric keys go to the service directly: for an ``oct-HSM`` key, whose key material Key Vault never
returns, ``CryptographyClient.wrap_key`` "wraps" locally with a random key of its own (azure-keyvault-keys
4.11), producing a blob that nothing can unwrap.

Identity and settings
---------------------
Credentials come from ``azure.identity.DefaultAzureCredential`` (workload identity on AKS, a managed
identity, ``az login`` on a workstation, or ``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_CLIENT_SECRET``),
created only when a vault is first used. ``client_id`` (default ``$AZURE_CLIENT_ID``) picks a user-assigned
managed identity or workload identity. The vault comes from ``vault=`` or ``$PPML_AZURE_VAULT``: a name
(``kv1`` → ``https://kv1.vault.azure.net``), a host or an ``https://`` URL.

Errors
------
SDK errors become ppml errors that say what to do, never with a token or key bytes: an unreachable vault
(usually a wrong name), 403 naming the identity Key Vault saw, the missing permission and the ``az``
command granting it (access policy or RBAC role), 404 (:class:`~ppml.errors.NotFoundError`; while
unwrapping, :class:`~ppml.errors.KeyAccessError` naming the key version), disabled keys, and throttling
(429), which the SDK retries with back-off (honouring ``Retry-After``) before ppml reports it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import os
import re
import secrets as _secrets
import string
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.keys import KeyClient, KeyOperation, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import AlreadyExistsError, ConfigError, KeyAccessError, NotFoundError, PpmlError, UsageError
from ppml.keys.kms import KeyManagementService, KeyVersionInfo, PrimaryKeyInfo

__all__ = [
    "AzureKeyVaultKms",
    "BigdlAzureKms",
    "vault_url",
    "get_secret",
    "set_secret",
    "secret_exists",
    "generate_password",
    "read_secret_reference",
    "VAULT_ENV",
    "CLIENT_ID_ENV",
    "DEFAULT_KEY_SIZE",
]

VAULT_ENV = "PPML_AZURE_VAULT"
CLIENT_ID_ENV = "AZURE_CLIENT_ID"
DEFAULT_KEY_SIZE = 3072
_VAULT_SUFFIX = ".vault.azure.net"
_HSM_SUFFIX = ".managedhsm.azure.net"
_VAULT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$")
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9-]{1,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9]{1,64}$")
_RSA_TYPES = ("RSA", "RSA-HSM")
_OCT_TYPES = ("oct", "oct-HSM")
_ALG_BYTES = {b"\x01": "RSA-OAEP-256", b"\x02": "A256KW"}
_ALG_PREFIX = {alg: prefix for prefix, alg in _ALG_BYTES.items()}
_BIGDL_KMS = "bigdl"
_BIGDL_MAX_KEY_STRING = 376  # what a BigDL v2 header can hold (ppml.crypto.bigdl_cbc.MAX_KEY_STRING_SIZE)
_CLIENT_CACHE_LIMIT = 256
_ROLES = {
    ("keys", "get"): "Key Vault Crypto User",
    ("keys", "wrapKey"): "Key Vault Crypto User",
    ("keys", "unwrapKey"): "Key Vault Crypto User",
    ("keys", "create"): "Key Vault Crypto Officer",
    ("keys", "rotate"): "Key Vault Crypto Officer",
    ("keys", "list"): "Key Vault Crypto Officer",
    ("secrets", "get"): "Key Vault Secrets User",
    ("secrets", "set"): "Key Vault Secrets Officer",
}
_T = TypeVar("_T")


# -- names and URLs --------------------------------------------------------------------------------------------


def vault_url(vault: str, *, managed_hsm: bool = False) -> str:
    """The ``https://`` URL of a vault given by name (``kv1``), host name or URL (no path, no query).

    >>> vault_url("kv1")
    'https://kv1.vault.azure.net'
    """
    if not isinstance(vault, str):
        raise TypeError(f"vault must be a str, not {type(vault).__name__}")
    text = vault.strip().rstrip("/")
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme.lower() != "https" or not parts.hostname or parts.path or parts.query or parts.fragment \
                or parts.username or parts.password:
            raise ConfigError(f"{vault!r} is not a Key Vault URL",
                              hint="give the vault name (kv1) or its URL, e.g. https://kv1.vault.azure.net; "
                                   "Key Vault only answers over https")
        return f"https://{parts.netloc.lower()}"
    if "." in text:
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?", text):
            raise ConfigError(f"{vault!r} is not a Key Vault host name")
        return f"https://{text.lower()}"
    if not _VAULT_NAME.match(text) or "--" in text:
        raise ConfigError(f"{vault!r} is not a valid Key Vault name",
                          hint="vault names are 3-24 letters, digits and single hyphens, starting with a letter")
    return f"https://{text.lower()}{_HSM_SUFFIX if managed_hsm else _VAULT_SUFFIX}"


def _vault_name(url: str) -> str:
    """The name ``az`` commands take: the first label of a ``*.vault.azure.net`` host, else the host."""
    host = urlsplit(url).hostname or url
    for suffix in (_VAULT_SUFFIX, _HSM_SUFFIX):
        if host.endswith(suffix):
            return host[: -len(suffix)]
    return host


def _check_object_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _OBJECT_NAME.match(name):
        raise UsageError(f"invalid Key Vault {what} name {name!r}",
                         hint="Key Vault names are 1-127 letters, digits and hyphens")
    return name


def _split_object_id(url: str, collection: str) -> tuple[str, str, str | None]:
    """``(vault URL, name, version or None)`` of ``https://host/<collection>/<name>[/<version>]``."""
    parts = urlsplit(url.strip())
    segments = [s for s in parts.path.split("/") if s]
    if (parts.scheme.lower() != "https" or not parts.hostname or parts.query or len(segments) not in (2, 3)
            or segments[0] != collection or not _OBJECT_NAME.match(segments[1])
            or (len(segments) == 3 and not _VERSION.match(segments[2]))):
        raise ValueError(f"not a Key Vault {collection[:-1]} URL: {url!r}")
    return f"https://{parts.netloc.lower()}", segments[1], segments[2] if len(segments) == 3 else None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _enum_value(value: object) -> str:
    return str(getattr(value, "value", value))


def _iso(moment: _dt.datetime | None) -> str:
    return moment.astimezone(_dt.timezone.utc).replace(microsecond=0).isoformat() if moment else ""


# -- connection, credential and error translation --------------------------------------------------------------


def _error_fields(exc: HttpResponseError) -> tuple[int, str, str, str]:
    """``(status, code, inner code, message)`` of a Key Vault error response, whatever raised it."""
    status = exc.status_code or 0
    code = inner = message = ""
    error = getattr(exc, "error", None)
    if error is not None:
        code, message = error.code or "", error.message or ""
        inner = getattr(error, "innererror", None) or {}
        inner = inner.get("code", "") if isinstance(inner, dict) else ""
    if not code and exc.response is not None:
        try:
            document = exc.response.json()
            body = document.get("error", {}) if isinstance(document, dict) else {}
            code, message = str(body.get("code", "")), str(body.get("message", ""))
            inner = str((body.get("innererror") or {}).get("code", ""))
        except (ValueError, AttributeError, TypeError):
            pass
    return status, code, inner, message


def _first_line(text: str, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


class _Connection:
    """One vault: its URL, the credential, SDK client options, and turning SDK errors into ppml errors."""

    def __init__(self, url: str, credential: Any = None, *, client_id: str | None = None,
                 connection_verify: str | bool | None = None, verify_challenge_resource: bool = True,
                 retry_total: int = 6, retry_backoff_factor: float = 0.8, retry_backoff_max: float = 30,
                 **client_options: Any) -> None:
        self.url = url
        self.managed_hsm = (urlsplit(url).hostname or "").endswith(_HSM_SUFFIX)
        self._credential = credential
        self._credential_given = credential is not None
        self.client_id = client_id if client_id is not None else (os.environ.get(CLIENT_ID_ENV) or None)
        self.retries = retry_total
        self.options: dict[str, Any] = {
            "verify_challenge_resource": verify_challenge_resource,
            "retry_total": retry_total,
            "retry_connect": min(2, retry_total),
            "retry_read": min(2, retry_total),
            "retry_status": retry_total,
            "retry_backoff_factor": retry_backoff_factor,
            "retry_backoff_max": retry_backoff_max,
            "connection_timeout": 10,
            "read_timeout": 60,
            **client_options,
        }
        if connection_verify is not None:
            self.options["connection_verify"] = connection_verify
        self._lock = threading.Lock()

    def credential(self) -> Any:
        with self._lock:
            if self._credential is None:
                try:
                    from azure.identity import DefaultAzureCredential
                except ImportError as exc:
                    raise ConfigError(f"Azure Key Vault needs azure-identity, which is not installed ({exc.name})",
                                      hint="pip install 'ppml[azure]'") from None
                if self.client_id:
                    self._credential = DefaultAzureCredential(managed_identity_client_id=self.client_id,
                                                              workload_identity_client_id=self.client_id)
                else:
                    self._credential = DefaultAzureCredential()
            return self._credential

    @property
    def identity(self) -> str:
        if self._credential_given:
            return f"the identity of the {type(self._credential).__name__} given to ppml"
        if self.client_id:
            return f"the identity with client id {self.client_id}"
        return "the DefaultAzureCredential identity of this process (workload or managed identity, or az login)"

    def call(self, fn: Callable[[], _T], *, kind: str, permission: str, subject: str,
             missing: Callable[[], PpmlError] | None = None,
             bad_request: Callable[[str], PpmlError] | None = None, key_id: str | None = None) -> _T:
        """Run one SDK call, translating its errors (``kind``/``permission`` say what it needed)."""
        try:
            return fn()
        except (AzureError, ValueError) as exc:
            raise self.translate(exc, kind=kind, permission=permission, subject=subject, missing=missing,
                                 bad_request=bad_request, key_id=key_id) from exc

    def translate(self, exc: BaseException, *, kind: str, permission: str, subject: str,
                  missing: Callable[[], PpmlError] | None = None,
                  bad_request: Callable[[str], PpmlError] | None = None, key_id: str | None = None) -> PpmlError:
        vault = self.url
        if isinstance(exc, ValueError):
            text = str(exc)
            if "challenge" in text.lower():
                return ConfigError(f"{vault} did not identify itself as Key Vault (its authentication challenge "
                                   "names another domain); no token was sent",
                                   hint="check the vault URL: it must be the vault's own https://NAME.vault.azure.net "
                                        "address")
            if "useable" in text or "expired" in text:
                return KeyAccessError(f"{subject} cannot be used now: {_first_line(text)}",
                                      hint=f"set new dates with: az keyvault key set-attributes --vault-name "
                                           f"{_vault_name(vault)} ... --expires/--not-before, or rotate the key")
            return ConfigError(f"Key Vault request for {subject} was refused by the Azure SDK: {_first_line(text)}")
        if isinstance(exc, ServiceRequestError):
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text:
                why, hint = "its TLS certificate is not trusted", \
                    "a TLS-inspecting proxy needs its CA in REQUESTS_CA_BUNDLE; otherwise check the vault URL"
            else:
                why = ("the name does not resolve" if re.search(r"NameResolution|not known|getaddrinfo|resolve", text)
                       else "the proxy could not reach it" if "ProxyError" in text or "Tunnel" in text
                       else "the connection was refused" if "refused" in text.lower()
                       else "no connection could be made")
                hint = (f"the vault name is the NAME in https://NAME.vault.azure.net (check it with: az keyvault "
                        f"show -n {_vault_name(vault)}); also check the network, proxy and firewall")
            return KeyAccessError(f"Key Vault {vault} is not reachable ({why}): check the vault name", hint=hint)
        if isinstance(exc, ServiceResponseError):
            return KeyAccessError(f"Key Vault {vault} did not answer while accessing {subject}",
                                  hint="retry; check the network and proxy")
        if isinstance(exc, ClientAuthenticationError) and (exc.response is None or exc.status_code != 401):
            return KeyAccessError(
                f"cannot get an Azure token for Key Vault {vault} as {self.identity}: {_first_line(exc.message)}",
                hint="on AKS use workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE), "
                     "on a VM a managed identity (AZURE_CLIENT_ID / --client-id for a user-assigned one), "
                     "on a workstation 'az login'")
        if isinstance(exc, HttpResponseError):
            status, code, inner, message = _error_fields(exc)
            if status == 401:
                return KeyAccessError(f"Key Vault {vault} rejected the token of {self.identity} ({code or 401})",
                                      hint="the vault may belong to another tenant: set AZURE_TENANT_ID, or log in to "
                                           "the vault's tenant")
            if status == 403:
                if inner == "KeyDisabled" or "disabled" in message.lower():
                    return KeyAccessError(f"{subject}: the key is disabled in Key Vault {vault}",
                                          hint="if it was disabled by mistake, enable it with: az keyvault key "
                                               f"set-attributes --id {key_id or vault + '/keys/NAME/VERSION'} "
                                               "--enabled true")
                return self._forbidden(kind, permission, subject, message)
            if status == 404:
                if missing is not None:
                    return missing()
                return NotFoundError(f"{subject} does not exist in Key Vault {vault} ({code or 'not found'})")
            if status == 429:
                return KeyAccessError(
                    f"Key Vault {vault} is throttling requests (HTTP 429) and still was after {self.retries} "
                    f"retries with back-off, while accessing {subject}",
                    hint="retry later, or lower the request rate (fewer parallel workers, fewer data keys): Key Vault "
                         "limits transactions per vault and per 10 seconds")
            if status == 400 and bad_request is not None:
                return bad_request(code or "BadParameter")
            return PpmlError(f"Key Vault {vault} refused an operation on {subject}: HTTP {status} {code}".rstrip()
                             + (f" ({_first_line(message, 200)})" if message else ""))
        return PpmlError(f"Key Vault {vault}: {type(exc).__name__} while accessing {subject}: "
                         f"{_first_line(str(exc), 200)}")

    def _forbidden(self, kind: str, permission: str, subject: str, message: str) -> KeyAccessError:
        appid = re.search(r"appid=([0-9A-Za-z-]+)", message)
        oid = re.search(r"oid=([0-9A-Za-z-]+)", message)
        if appid:
            who = f"identity appid={appid.group(1)}" + (f" (object id {oid.group(1)})" if oid else "")
        else:
            who = self.identity
        name = _vault_name(self.url)
        principal = oid.group(1) if oid else (self.client_id or "<OBJECT_ID>")
        # The grant command goes into the message itself: a key ring that tried several keys lists each
        # failure's message, so the way out must not live only in the hint.
        if self.managed_hsm:
            grant = (f"az keyvault role assignment create --hsm-name {name} --role \"Managed HSM Crypto User\" "
                     f"--assignee {principal} --scope /keys")
            hint = "Managed HSM has no access policies; its local RBAC roles grant key permissions"
        else:
            flag = "--key-permissions" if kind == "keys" else "--secret-permissions"
            who_flag = f"--object-id {principal}" if oid or not self.client_id else f"--spn {self.client_id}"
            role = _ROLES.get((kind, permission),
                              "Key Vault Crypto User" if kind == "keys" else "Key Vault Secrets User")
            grant = f"az keyvault set-policy -n {name} {flag} {permission} {who_flag}"
            hint = (f"vaults using Azure RBAC instead of access policies: az role assignment create --role \"{role}\" "
                    f"--assignee {principal} --scope $(az keyvault show -n {name} --query id -o tsv)")
        return KeyAccessError(f"{who} lacks the '{permission}' {kind[:-1]} permission on Key Vault {self.url} "
                              f"(needed for {subject}); grant it with: {grant}", hint=hint)


def _connection(vault: str | None, credential: Any, *, managed_hsm: bool = False, **options: Any) -> _Connection:
    vault = vault or os.environ.get(VAULT_ENV)
    if not vault:
        raise ConfigError("no Azure Key Vault is configured",
                          hint=f"pass --vault NAME (or set {VAULT_ENV}) naming the vault, e.g. kv1 or "
                               "https://kv1.vault.azure.net")
    return _Connection(vault_url(vault, managed_hsm=managed_hsm), credential, **options)


def _refuse_pickle(cls_name: str) -> NoReturn:
    raise TypeError(f"{cls_name} cannot be pickled: it holds a live Azure credential; open it where it is used")


# -- the ppml backend ------------------------------------------------------------------------------------------


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
        self._conn = _connection(vault, credential, managed_hsm=bool(managed_hsm), client_id=client_id,
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
        _refuse_pickle(type(self).__name__)

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
            vault, name, _ = _split_object_id(key, "keys")
        except ValueError:
            return key
        return f"{vault}/keys/{name.lower()}"

    def _versioned(self, name: str, version: str) -> str:
        return f"{self.vault_url}/keys/{name}/{version}"

    def _key_name(self, key_name: str) -> str:
        """A key name, or a versionless key id of this vault (what ``WrappedKey.key`` holds)."""
        if isinstance(key_name, str) and "://" in key_name:
            try:
                vault, name, version = _split_object_id(key_name, "keys")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            if vault != self.vault_url:
                raise UsageError(f"{key_name} is in Key Vault {vault}, not in {self.vault_url}",
                                 hint="use --vault with that vault, or give the key by name")
            if version:
                raise UsageError(f"{key_name} names a key version; give the key (its name or versionless URL)",
                                 hint="new data keys are always wrapped by the key's current version")
            return name
        return _check_object_name(key_name, "key")

    # -- primary keys

    def _get(self, name: str, version: str | None = None) -> KeyVaultKey:
        subject = f"Key Vault key {self.vault_url}/keys/{name}" + (f"/{version}" if version else "")
        return self._conn.call(
            lambda: self._client().get_key(name, version), kind="keys", permission="get", subject=subject,
            key_id=self._versioned(name, version) if version else self.key_identifier(name),
            missing=lambda: NotFoundError(
                f"no key {name!r}" + (f" version {version}" if version else "") + f" in Key Vault {self.vault_url}",
                hint=f"create it with: ppml keys init --kms azure --vault {_vault_name(self.vault_url)} --key-name "
                     f"{name}  (or az keyvault key create --vault-name {_vault_name(self.vault_url)} -n {name} "
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
            vault, name, version_in_url = _split_object_id(wrapped.key, "keys")
        except ValueError:
            raise KeyAccessError(f"{reference} does not name a Key Vault key",
                                 hint="the header or data-key file was modified") from None
        if vault != self.vault_url:
            raise KeyAccessError(
                f"{reference} is a key of Key Vault {vault}, but this process is configured for {self.vault_url}",
                hint=f"use --vault {_vault_name(vault)} (or {VAULT_ENV}) to unwrap it; ppml only sends tokens to the "
                     "vaults it is configured for")
        version = wrapped.version
        if version_in_url or not _VERSION.match(version or ""):
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


# -- BigDL's AzureKeyManagementService --------------------------------------------------------------------------


class BigdlAzureKms(KeyManagementService):
    """BigDL PPML's ``AzureKeyManagementService`` data keys: RSA-OAEP (SHA-1) through Key Vault.

    Give the Key Vault key URL BigDL's primary-key file holds (``https://<vault>.vault.azure.net/keys/<name>/
    <version>``), directly or as that file. A versionless URL means the key's current version, which
    stops matching older data keys once the key is rotated.

    Parameters
    ----------
    key_url, primary_key_file
        The key URL, or BigDL's primary-key file holding it on one line; exactly one.
    credential, client_id, connection_verify, verify_challenge_resource, **client_options
        As for :class:`AzureKeyVaultKms`.
    """

    name = "bigdl-azure"

    def __init__(self, key_url: str | None = None, primary_key_file: str | os.PathLike[str] | None = None,
                 credential: Any = None, *, client_id: str | None = None,
                 connection_verify: str | bool | None = None, verify_challenge_resource: bool = True,
                 **client_options: Any) -> None:
        if (key_url is None) == (primary_key_file is None):
            raise ConfigError("BigDL's AzureKeyManagementService needs exactly one of key_url or primary_key_file")
        if primary_key_file is not None:
            path = Path(primary_key_file).expanduser()
            try:
                key_url = path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                raise NotFoundError(f"the BigDL primary key file {str(path)!r} does not exist") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read the BigDL primary key file {str(path)!r} ({exc})") from None
        try:
            vault, self._name, self._version = _split_object_id(str(key_url), "keys")
        except ValueError:
            raise ConfigError(f"{key_url!r} is not a Key Vault key URL",
                              hint="BigDL's Azure primary key is the key's URL, "
                                   "https://<vault>.vault.azure.net/keys/<name>/<version>") from None
        self.key_url = f"{vault}/keys/{self._name}" + (f"/{self._version}" if self._version else "")
        self._conn = _Connection(vault, credential, client_id=client_id, connection_verify=connection_verify,
                                 verify_challenge_resource=verify_challenge_resource, **client_options)
        self._client: CryptographyClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BigdlAzureKms(key_url={self.key_url!r})"

    def __reduce__(self) -> NoReturn:
        _refuse_pickle(type(self).__name__)

    def _crypto(self) -> CryptographyClient:
        with self._lock:
            if self._client is None:
                self._client = CryptographyClient(self.key_url, self._conn.credential(), **self._conn.options)
            return self._client

    def supports(self, wrapped: WrappedKey) -> bool:
        return wrapped.kms in (_BIGDL_KMS, self.name)

    def key_identifier(self, key_name: str) -> str:
        return self.key_url

    def wrap(self, key: DataKey, key_name: str = "") -> WrappedKey:
        """Encrypt a BigDL data key (the base64 string) as BigDL does: RSA-OAEP over its decoded bytes."""
        try:
            raw = base64.b64decode(key.unsafe_material(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a BigDL Azure data key is a base64 string (as generate_data_key makes)") from None
        encrypted = self._conn.call(lambda: self._crypto().wrap_key(KeyWrapAlgorithm.rsa_oaep, raw).encrypted_key,
                                    kind="keys", permission="wrapKey", subject=self.key_url)
        text = base64.b64encode(encrypted)
        if len(text) > _BIGDL_MAX_KEY_STRING:
            raise ConfigError(
                f"{self.key_url} is an RSA-{8 * len(encrypted)} key: its encrypted data keys ({len(text)} characters) "
                f"do not fit a BigDL file header ({_BIGDL_MAX_KEY_STRING})",
                hint="BigDL's Azure KMS uses RSA-2048 keys: az keyvault key create --kty RSA --size 2048 ...")
        return WrappedKey(self.name, self.key_url, "", text)

    def unwrap(self, wrapped: WrappedKey) -> DataKey:
        reference = wrapped.reference if wrapped.kms != _BIGDL_KMS else "the BigDL encrypted data key"
        if not self.supports(wrapped):
            raise KeyAccessError(f"the data key {reference} was not wrapped by BigDL's AzureKeyManagementService")
        if wrapped.kms == self.name and wrapped.key and wrapped.key != self.key_url:
            raise KeyAccessError(f"{reference} was wrapped by another Key Vault key (this one is {self.key_url})",
                                 hint="give the primary key file the files were written with")
        try:
            encrypted = base64.b64decode(wrapped.wrapped, validate=True)
        except (binascii.Error, ValueError):
            raise KeyAccessError(f"{reference} is not base64", hint="check the .meta file or the file header") \
                from None
        if len(encrypted) not in (256, 384, 512):
            raise KeyAccessError(f"{reference} is not an RSA-wrapped key (BigDL AzureKeyManagementService); "
                                 f"it is {len(encrypted)} bytes",
                                 hint="files of another BigDL KMS need that KMS's options")

        def bad_request(code: str) -> PpmlError:
            return KeyAccessError(f"Key Vault could not unwrap {reference} with {self.key_url} ({code})",
                                  hint="the data was written under another key or key version")

        raw = self._conn.call(lambda: self._crypto().unwrap_key(KeyWrapAlgorithm.rsa_oaep, encrypted).key,
                              kind="keys", permission="unwrapKey", subject=self.key_url, bad_request=bad_request,
                              missing=lambda: KeyAccessError(f"the key {self.key_url} does not exist in Key Vault"))
        return DataKey(base64.b64encode(raw))

    def generate_data_key(self, key_name: str = "") -> tuple[DataKey, WrappedKey]:
        """A new BigDL data key (base64 of 32 random bytes, 44 characters) and its encrypted form."""
        key = DataKey(base64.b64encode(os.urandom(32)))
        return key, self.wrap(key, key_name)

    def describe_key(self, key_name: str = "") -> PrimaryKeyInfo:
        return PrimaryKeyInfo(self.name, self.key_url, self._version or "", details={"key_url": self.key_url})


# -- secrets ---------------------------------------------------------------------------------------------------


def _secret_client(vault: str | None, credential: Any = None, **options: Any):
    from azure.keyvault.secrets import SecretClient

    conn = _connection(vault, credential, **options)
    return conn, SecretClient(conn.url, conn.credential(), **conn.options)


def get_secret(vault: str | None, name: str, *, version: str | None = None, credential: Any = None,
               **options: Any) -> str:
    """The value of secret ``name`` (its latest version unless ``version``) in ``vault``.

    ``options``: ``client_id``, ``connection_verify``, ``verify_challenge_resource`` and SDK client options,
    as for :class:`AzureKeyVaultKms`.
    """
    _check_object_name(name, "secret")
    conn, client = _secret_client(vault, credential, **options)
    subject = f"secret {name!r}" + (f" version {version}" if version else "")
    secret = conn.call(lambda: client.get_secret(name, version), kind="secrets", permission="get", subject=subject,
                       missing=lambda: NotFoundError(f"no {subject} in Key Vault {conn.url}",
                                                     hint="create it with: ppml azure secret set NAME --vault VAULT"))
    if secret.value is None:
        raise KeyAccessError(f"{subject} in Key Vault {conn.url} has no value")
    return secret.value


def secret_exists(vault: str | None, name: str, *, credential: Any = None, **options: Any) -> str | None:
    """The latest version of secret ``name``, or ``None`` when there is no such secret."""
    _check_object_name(name, "secret")
    conn, client = _secret_client(vault, credential, **options)
    try:
        secret = conn.call(lambda: client.get_secret(name), kind="secrets", permission="get",
                           subject=f"secret {name!r}")
    except NotFoundError:
        return None
    return secret.properties.version or ""


def set_secret(vault: str | None, name: str, value: str, *, content_type: str | None = None,
               credential: Any = None, **options: Any) -> tuple[str, str]:
    """Store ``value`` as a new version of secret ``name``; returns ``(vault URL, version)``."""
    _check_object_name(name, "secret")
    if not isinstance(value, str) or not value:
        raise UsageError("a secret value must be a non-empty string")
    conn, client = _secret_client(vault, credential, **options)
    secret = conn.call(lambda: client.set_secret(name, value, content_type=content_type), kind="secrets",
                       permission="set", subject=f"secret {name!r}")
    return conn.url, secret.properties.version or ""


_PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_"


def generate_password(length: int = 32) -> str:
    """A random password of ``length`` (16 to 1024) letters, digits, ``-`` and ``_`` (6 bits each)."""
    if not isinstance(length, int) or isinstance(length, bool):
        raise TypeError("length must be an int")
    if not 16 <= length <= 1024:
        raise ValueError(f"length must be 16 to 1024 characters, not {length}")
    return "".join(_secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


def read_secret_reference(reference: str, *, what: str = "secret", **options: Any) -> str:
    """A secret named ``VAULT/NAME``, ``VAULT/NAME/VERSION`` or ``https://<vault>/secrets/NAME[/VERSION]``.

    This is what the ``azure-secret:`` secret source (:func:`ppml.keys.settings.read_secret_source`) reads.
    """
    text = reference.strip()
    if text.startswith("https://"):
        try:
            vault, name, version = _split_object_id(text, "secrets")
        except ValueError:
            raise UsageError(f"the {what} source azure-secret:{reference} is not a Key Vault secret URL",
                             hint="use azure-secret:VAULT/NAME or azure-secret:https://VAULT.vault.azure.net/secrets/"
                                  "NAME") from None
    else:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"the {what} source azure-secret:{reference} must be azure-secret:VAULT/NAME",
                             hint="e.g. azure-secret:kv1/keystore-pass")
        vault, name, version = parts[0], parts[1], parts[2] if len(parts) == 3 else None
    return get_secret(vault, name, version=version, **options)
