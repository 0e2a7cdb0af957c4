"""One Azure Key Vault (or Managed HSM): its URL and object names, the credential, and ppml's errors for it.

This is what the Key Vault backends (:mod:`ppml.keys.azure`, :mod:`ppml.keys.bigdl_azure`) and Key Vault
secrets (:mod:`ppml.keys.azure_secrets`) share; none of it wraps a key.

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
command granting it (access policy or RBAC role), 404 (:class:`~ppml.errors.NotFoundError`, or what the
caller says is missing), disabled keys, and throttling (429), which the SDK retries with back-off
(honouring ``Retry-After``) before ppml reports it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from ppml.errors import ConfigError, KeyAccessError, NotFoundError, PpmlError, UsageError

__all__ = [
    "CLIENT_ID_ENV",
    "OBJECT_VERSION",
    "UNPICKLABLE_BECAUSE",
    "VAULT_ENV",
    "Connection",
    "check_object_name",
    "connect",
    "split_object_id",
    "vault_name",
    "vault_url",
]

VAULT_ENV = "PPML_AZURE_VAULT"
CLIENT_ID_ENV = "AZURE_CLIENT_ID"
#: Why the Key Vault backends refuse to be pickled.
UNPICKLABLE_BECAUSE = "it holds a live Azure credential; open it where it is used"
_VAULT_SUFFIX = ".vault.azure.net"
_HSM_SUFFIX = ".managedhsm.azure.net"
_VAULT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$")
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9-]{1,127}$")
OBJECT_VERSION = re.compile(r"^[A-Za-z0-9]{1,64}$")
_ROLES = {
    ("keys", "get"): "Key Vault Crypto User",
    ("keys", "wrapKey"): "Key Vault Crypto User",
    ("keys", "unwrapKey"): "Key Vault Crypto User",
    ("keys", "create"): "Key Vault Crypto Officer",
    ("keys", "rotate"): "Key Vault Crypto Officer",
    ("keys", "update"): "Key Vault Crypto Officer",
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


def vault_name(url: str) -> str:
    """The name ``az`` commands take: the first label of a ``*.vault.azure.net`` host, else the host."""
    host = urlsplit(url).hostname or url
    for suffix in (_VAULT_SUFFIX, _HSM_SUFFIX):
        if host.endswith(suffix):
            return host[: -len(suffix)]
    return host


def check_object_name(name: str, what: str) -> str:
    """``name`` if it is a valid name for a Key Vault ``what`` (key, secret), else a :class:`UsageError`."""
    if not isinstance(name, str) or not _OBJECT_NAME.match(name):
        raise UsageError(f"invalid Key Vault {what} name {name!r}",
                         hint="Key Vault names are 1-127 letters, digits and hyphens")
    return name


def split_object_id(url: str, collection: str) -> tuple[str, str, str | None]:
    """``(vault URL, name, version or None)`` of ``https://host/<collection>/<name>[/<version>]``."""
    parts = urlsplit(url.strip())
    segments = [s for s in parts.path.split("/") if s]
    if (parts.scheme.lower() != "https" or not parts.hostname or parts.query or len(segments) not in (2, 3)
            or segments[0] != collection or not _OBJECT_NAME.match(segments[1])
            or (len(segments) == 3 and not OBJECT_VERSION.match(segments[2]))):
        raise ValueError(f"not a Key Vault {collection[:-1]} URL: {url!r}")
    return f"https://{parts.netloc.lower()}", segments[1], segments[2] if len(segments) == 3 else None


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


class Connection:
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
                                           f"{vault_name(vault)} ... --expires/--not-before, or rotate the key")
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
                        f"show -n {vault_name(vault)}); also check the network, proxy and firewall")
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
        name = vault_name(self.url)
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


def connect(vault: str | None, credential: Any, *, managed_hsm: bool = False, **options: Any) -> Connection:
    """A :class:`Connection` to ``vault`` (name, host or URL), by default ``$PPML_AZURE_VAULT``."""
    vault = vault or os.environ.get(VAULT_ENV)
    if not vault:
        raise ConfigError("no Azure Key Vault is configured",
                          hint=f"pass --vault NAME (or set {VAULT_ENV}) naming the vault, e.g. kv1 or "
                               "https://kv1.vault.azure.net")
    return Connection(vault_url(vault, managed_hsm=managed_hsm), credential, **options)
