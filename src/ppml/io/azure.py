"""Azure Blob Storage and ADLS Gen2 through adlfs: credentials, clear errors, and server-side copies.

:func:`~ppml.io.storage.locate` calls :func:`resolve` for every ``abfs://``, ``abfss://`` and ``az://`` URL,
so callers never pass credentials around. Credentials come, in this order, from

1. explicit :class:`AzureStorageSettings` (secrets named by *source*: ``env:VAR``, ``file:PATH`` or
   ``azure-secret:VAULT/NAME``, resolved by the process that uses them, e.g. each Spark executor);
2. the environment variables Azure users already set: ``AZURE_STORAGE_CONNECTION_STRING``, then
   ``AZURE_STORAGE_ACCOUNT_KEY``, then ``AZURE_STORAGE_SAS_TOKEN`` (with ``AZURE_STORAGE_ACCOUNT_NAME``);
3. ``DefaultAzureCredential`` (managed identity, workload identity, Azure CLI sign-in, ...), with the
   user-assigned identity's ``AZURE_CLIENT_ID`` when set.

The account comes from an ``abfss://container@ACCOUNT.dfs.core.windows.net/`` URL, the settings, the
connection string or ``AZURE_STORAGE_ACCOUNT_NAME``. Secrets never appear in errors, ``repr``s or Spark
options; errors say which credential was used and which setting to change.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit

from ppml.errors import ConfigError, KeyAccessError, NotFoundError, PpmlError, UsageError

__all__ = [
    "AZURE_PROTOCOLS",
    "AzureStorageSettings",
    "AzureAuth",
    "StorageAccessError",
    "azure_storage_options",
    "resolve",
    "translate_error",
    "copy_blobs",
    "container_exists",
]

AZURE_PROTOCOLS = frozenset({"abfs", "abfss", "az"})
ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT_NAME = "AZURE_STORAGE_ACCOUNT_NAME"
ENV_ACCOUNT_KEY = "AZURE_STORAGE_ACCOUNT_KEY"
ENV_SAS_TOKEN = "AZURE_STORAGE_SAS_TOKEN"
ENV_CLIENT_ID = "AZURE_CLIENT_ID"
_ENV = (ENV_CONNECTION_STRING, ENV_ACCOUNT_NAME, ENV_ACCOUNT_KEY, ENV_SAS_TOKEN, ENV_CLIENT_ID)

#: Bytes per request for sequential reads and per staged block for writes (fewer, larger requests).
BLOCK_SIZE = 8 * 1024 * 1024
#: Bytes fetched when only a header is needed (format sniffing, ``describe``, split planning).
HEADER_BLOCK_SIZE = 64 * 1024
_DFS_HOST = re.compile(r"^(?P<account>[a-z0-9]{3,24})\.(dfs|blob)\.core\.windows\.net$")
_HINT_SETTINGS = (f"set {ENV_CONNECTION_STRING}, or {ENV_ACCOUNT_NAME} with {ENV_ACCOUNT_KEY} or "
                  f"{ENV_SAS_TOKEN}, or use a managed identity ({ENV_CLIENT_ID} for a user-assigned one)")


class StorageAccessError(KeyAccessError):
    """The storage service refused the credentials, or they lack a permission (exit code 5)."""

    code = "storage-access"


_SOURCE_KINDS = ("env", "file", "azure-secret")


def _check_source(value: str | None, what: str) -> None:
    kind, sep, rest = (value or "").partition(":")
    if value is not None and not (sep and rest and kind in _SOURCE_KINDS):
        raise UsageError(f"the {what} must be given as env:VAR, file:PATH or azure-secret:VAULT/NAME, "
                         "not as a value",
                         hint="settings travel to Spark executors and into logs; name where the secret is, "
                              f"e.g. env:{ENV_ACCOUNT_KEY} or file:/var/run/secrets/storage-key")


@dataclass(frozen=True)
class AzureStorageSettings:
    """Explicit storage settings; every secret is a *source* (``env:VAR``, ``file:PATH``,
    ``azure-secret:VAULT/NAME``; see :func:`ppml.keys.settings.read_secret_source`), never a value.

    Parameters
    ----------
    account_name
        Storage account (default: from the URL, the connection string or ``$AZURE_STORAGE_ACCOUNT_NAME``).
    connection_string
        Source of a connection string (account key or SAS, any endpoint: Azurite, sovereign clouds).
    account_key
        Source of the account's shared key.
    sas_token
        Source of a SAS token (account or container scoped).
    client_id
        Client id of a user-assigned managed identity; selects ``DefaultAzureCredential``.
    blob_endpoint
        Blob endpoint URL when it is not ``https://ACCOUNT.blob.core.windows.net`` (private endpoints,
        emulators); not secret.

    The settings are picklable and hold no secret, so they can travel to Spark executors; each
    process reads the sources itself. ``repr`` shows sources only.
    """

    account_name: str | None = None
    connection_string: str | None = None
    account_key: str | None = None
    sas_token: str | None = None
    client_id: str | None = None
    blob_endpoint: str | None = None

    #: Spark / PPMLContext option names of each setting.
    OPTIONS = {
        "account_name": "azureStorageAccount",
        "connection_string": "azureStorageConnectionString",
        "account_key": "azureStorageAccountKey",
        "sas_token": "azureStorageSasToken",
        "client_id": "azureClientId",
        "blob_endpoint": "azureStorageBlobEndpoint",
    }

    def __post_init__(self) -> None:
        _check_source(self.connection_string, "storage connection string")
        _check_source(self.account_key, "storage account key")
        _check_source(self.sas_token, "storage SAS token")
        if self.blob_endpoint is not None and not self.blob_endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"the blob endpoint must be an http(s) URL, not {self.blob_endpoint!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> AzureStorageSettings:
        """Settings from data source options (names as in :attr:`OPTIONS`, case-insensitive)."""
        lowered = {str(k).lower(): v for k, v in options.items()}
        return cls(**{name: lowered.get(option.lower()) or None for name, option in cls.OPTIONS.items()})

    def to_options(self) -> dict[str, str]:
        """The settings as data source options (only those that are set)."""
        return {self.OPTIONS[f.name]: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class AzureAuth:
    """How a URL's account was reached: no secret, except the values to scrub from messages."""

    account: str | None
    method: str
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


def _parse_connection_string(text: str) -> dict[str, str]:
    parts = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            parts[name.strip().lower()] = value.strip()
    return parts


def _url_account(url: str) -> str | None:
    """The account named by an ``abfss://container@ACCOUNT.dfs.core.windows.net/`` URL, if any."""
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return None
    host = netloc.split("@", 1)[1].lower()
    match = _DFS_HOST.match(host)
    if not match:
        raise ConfigError(f"cannot open {url}: {host} is not an Azure storage host (ACCOUNT.dfs.core.windows.net)",
                          hint="for other endpoints use abfs://container/path with a connection string")
    return match.group("account")


def _secret(source: str, what: str) -> str:
    from ppml.keys.settings import read_secret_source

    return read_secret_source(source, what=what)


_CACHE: dict[tuple, tuple[dict[str, object], AzureAuth]] = {}
_CACHE_LOCK = threading.Lock()


def resolve(url: str, settings: AzureStorageSettings | None = None) -> tuple[dict[str, object], AzureAuth]:
    """adlfs keyword arguments for ``url`` and a description of the credential, cached per process.

    Raises :class:`~ppml.errors.ConfigError` when no account can be determined or the settings
    contradict the URL.
    """
    settings = settings or AzureStorageSettings()
    url_account = _url_account(url)
    key = (url_account, settings, tuple(os.environ.get(name) for name in _ENV))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is None:
        cached = _resolve(url, url_account, settings)
        with _CACHE_LOCK:
            cached = _CACHE.setdefault(key, cached)
    return dict(cached[0]), cached[1]


def azure_storage_options(url: str, settings: AzureStorageSettings | None = None) -> dict[str, object]:
    """The storage options ``adlfs.AzureBlobFileSystem`` needs for ``url`` (see the module docstring)."""
    return resolve(url, settings)[0]


def _resolve(url: str, url_account: str | None, settings: AzureStorageSettings):
    env = os.environ
    common: dict[str, object] = {"blocksize": BLOCK_SIZE, "use_listings_cache": False}

    def account_or_fail(method: str) -> str:
        account = url_account or settings.account_name or env.get(ENV_ACCOUNT_NAME)
        if not account:
            raise ConfigError(f"cannot open {url}: no storage account is named (authenticating with {method})",
                              hint=f"set {ENV_ACCOUNT_NAME}, or use abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH")
        if url_account and settings.account_name and url_account != settings.account_name.lower():
            raise ConfigError(f"{url} names account {url_account} but the settings name {settings.account_name}")
        return account

    def endpoint(account: str) -> str:
        return (settings.blob_endpoint or f"https://{account}.blob.core.windows.net").rstrip("/")

    def with_connection_string(text: str, method: str):
        parts = _parse_connection_string(text)
        account = parts.get("accountname")
        if account is None and parts.get("blobendpoint"):
            account = _DFS_HOST.match(urlsplit(parts["blobendpoint"]).netloc.lower() or "")
            account = account.group("account") if account else None
        if url_account and account and url_account != account.lower():
            raise ConfigError(f"{url} names account {url_account} but the connection string ({method}) is for "
                              f"account {account}", hint="use a connection string for that account")
        secrets = tuple(v for k, v in parts.items() if k in ("accountkey", "sharedaccesssignature")) + (text,)
        return {**common, "connection_string": text}, AzureAuth(account or url_account, method, secrets)

    def with_key(key: str, method: str):
        account = account_or_fail(method)
        text = f"DefaultEndpointsProtocol=https;AccountName={account};AccountKey={key};BlobEndpoint={endpoint(account)};"
        options, auth = with_connection_string(text, method)
        return options, AzureAuth(account, f"the shared key of account {account} ({method})", (key, *auth.secrets))

    def with_sas(token: str, method: str):
        account = account_or_fail(method)
        token = token.lstrip("?")
        text = f"BlobEndpoint={endpoint(account)};SharedAccessSignature={token};"
        options, auth = with_connection_string(text, method)
        return options, AzureAuth(account, f"a SAS token for account {account} ({method})", (token, *auth.secrets))

    def with_identity(client_id: str | None, method: str):
        account = account_or_fail(method)
        if env.get(ENV_CONNECTION_STRING):
            raise ConfigError(f"cannot use {method} for {url}: {ENV_CONNECTION_STRING} is set and adlfs would "
                              "use it instead", hint=f"unset {ENV_CONNECTION_STRING} in this process")
        try:
            from azure.identity.aio import DefaultAzureCredential
        except ImportError:
            raise ConfigError("DefaultAzureCredential needs azure-identity",
                              hint="pip install 'ppml[azure]'") from None
        credential = DefaultAzureCredential(managed_identity_client_id=client_id) if client_id else \
            DefaultAzureCredential()
        options: dict[str, object] = {**common, "account_name": account, "credential": credential}
        if settings.blob_endpoint:
            options["account_host"] = urlsplit(settings.blob_endpoint).netloc
        return options, AzureAuth(account, method)

    if settings.connection_string:
        return with_connection_string(_secret(settings.connection_string, "storage connection string"),
                                      f"connection string from {settings.connection_string}")
    if settings.account_key:
        return with_key(_secret(settings.account_key, "storage account key"), f"from {settings.account_key}")
    if settings.sas_token:
        return with_sas(_secret(settings.sas_token, "storage SAS token"), f"from {settings.sas_token}")
    if settings.client_id:
        return with_identity(settings.client_id, f"DefaultAzureCredential with managed identity {settings.client_id}")
    if env.get(ENV_CONNECTION_STRING):
        return with_connection_string(env[ENV_CONNECTION_STRING].strip(), f"connection string from ${ENV_CONNECTION_STRING}")
    if env.get(ENV_ACCOUNT_KEY):
        return with_key(env[ENV_ACCOUNT_KEY].strip(), f"from ${ENV_ACCOUNT_KEY}")
    if env.get(ENV_SAS_TOKEN):
        return with_sas(env[ENV_SAS_TOKEN].strip(), f"from ${ENV_SAS_TOKEN}")
    client_id = env.get(ENV_CLIENT_ID)
    return with_identity(None, "DefaultAzureCredential" + (f" (managed identity {client_id} from ${ENV_CLIENT_ID})"
                                                           if client_id else ""))


# -- errors -------------------------------------------------------------------------------------------------


def split_container(path: str) -> tuple[str, str]:
    """``("container", "blob/path")`` of an adlfs path."""
    container, _, rest = path.lstrip("/").partition("/")
    return container, rest


def _permission_hint(auth: AzureAuth) -> str:
    if auth.method.startswith("DefaultAzureCredential"):
        return ("grant the identity the 'Storage Blob Data Reader' role (reading) or 'Storage Blob Data "
                "Contributor' (writing) on the account or container")
    if "SAS" in auth.method:
        return "issue a SAS token with the needed permissions (r, l for reading; w, c, d, a for writing) that has not expired"
    return _HINT_SETTINGS


def translate_error(exc: BaseException, url: str, path: str, auth: AzureAuth | None) -> PpmlError | None:
    """The ppml error for an Azure SDK or adlfs exception about ``url``, or ``None`` if it is not one."""
    try:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )
    except ImportError:  # pragma: no cover - adlfs always brings azure-core
        return None
    # adlfs re-raises some SDK errors as RuntimeError / ValueError / OSError "from" the original.
    seen = 0
    while not _is_azure_error(exc) and exc.__cause__ is not None and seen < 5:
        exc, seen = exc.__cause__, seen + 1
    auth = auth or AzureAuth(None, "unknown credentials")
    container, _ = split_container(path)
    account = auth.account or "?"
    using = f"using {auth.method}"
    code = getattr(exc, "error_code", None) or ""
    code = str(getattr(code, "value", code))
    status = getattr(exc, "status_code", None)
    if type(exc).__name__ == "CredentialUnavailableError" or (
            isinstance(exc, ClientAuthenticationError) and status is None):
        return StorageAccessError(f"no Azure credential is available for {url} ({using})",
                                  hint=_HINT_SETTINGS)
    if isinstance(exc, ResourceNotFoundError) or code in ("ContainerNotFound", "BlobNotFound"):
        if code == "ContainerNotFound":
            return container_not_found(url, container, account)
        return NotFoundError(f"{url} does not exist")
    if isinstance(exc, HttpResponseError) and (status in (401, 403) or isinstance(exc, ClientAuthenticationError)):
        if code == "AuthorizationPermissionMismatch" or code == "AuthorizationResourceTypeMismatch":
            return StorageAccessError(f"access to {url} was denied: the credential lacks a permission ({using}; {code})",
                                      hint=_permission_hint(auth))
        return StorageAccessError(f"storage account {account} refused the credentials for {url} "
                                  f"({using}; {code or status})",
                                  hint=f"check the key, token or identity; {_HINT_SETTINGS}")
    if isinstance(exc, HttpResponseError):
        first = auth.scrub(str(getattr(exc, "message", None) or exc)).splitlines()[0][:200]
        return PpmlError(f"storage request for {url} failed ({status} {code}): {first}")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        first = auth.scrub(str(exc)).splitlines()[0][:200]
        return ConfigError(f"cannot reach storage account {account} for {url}: {first}",
                           hint="check the account name, the endpoint and the network")
    if isinstance(exc, ValueError) and "unable to connect to account" in str(exc):
        return ConfigError(f"cannot connect to storage account {account} for {url} ({using})",
                           hint=f"check the connection settings: {_HINT_SETTINGS}")
    if isinstance(exc, asyncio.TimeoutError):
        return ConfigError(f"storage account {account} did not answer in time for {url}")
    return None


def _is_azure_error(exc: BaseException) -> bool:
    return any(cls.__module__.startswith(("azure.core", "azure.identity", "azure.storage"))
               for cls in type(exc).__mro__)


def container_not_found(url: str, container: str, account: str) -> NotFoundError:
    return NotFoundError(f"container '{container}' does not exist in storage account {account} ({url})",
                         hint=f"check the URL, or create it: az storage container create --name {container} "
                              f"--account-name {account} --auth-mode login")


def container_exists(fs, container: str) -> bool | None:
    """Whether ``container`` exists; ``None`` when the credential may not ask (e.g. a container SAS)."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from fsspec.asyn import sync

    async def check() -> bool | None:
        try:
            async with fs.service_client.get_container_client(container) as client:
                await client.get_container_properties()
            return True
        except ResourceNotFoundError:
            return False
        except HttpResponseError as exc:
            if getattr(exc, "status_code", None) == 403 and getattr(exc, "error_code", "") in (
                    "AuthenticationFailed", "InvalidAuthenticationInfo"):
                raise  # wrong credentials: a clear error now beats a confusing one later
            return None

    return sync(fs.loop, check)


# -- server-side copies -------------------------------------------------------------------------------------


async def _copy_one(fs, src: str, dst: str, semaphore: asyncio.Semaphore) -> None:
    src_container, src_blob = split_container(src)
    dst_container, dst_blob = split_container(dst)
    async with semaphore:
        source = fs.service_client.get_blob_client(src_container, src_blob)
        target = fs.service_client.get_blob_client(dst_container, dst_blob)
        async with source, target:
            props = await target.start_copy_from_url(source.url)
            status = props.get("copy_status")
            delay = 0.05
            while status == "pending":  # copies between accounts, or of very large blobs, may take a while
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                status = (await target.get_blob_properties()).copy.status
            if status != "success":
                raise PpmlError(f"copying {src} to {dst} ended with status {status}")


def copy_blobs(fs, pairs: Sequence[tuple[str, str]], *, delete_source: bool = False, workers: int = 16) -> None:
    """Server-side copies ``src → dst`` (each waited for until complete), then optionally delete the sources.

    Each copy replaces its target blob atomically (readers see the old or the new blob), but a set of
    copies is not atomic as a whole.
    """
    from fsspec.asyn import sync

    if not pairs:
        return

    async def run() -> None:
        semaphore = asyncio.Semaphore(workers)
        await asyncio.gather(*(_copy_one(fs, s, d, semaphore) for s, d in pairs))

    sync(fs.loop, run)
    if delete_source:
        fs.rm([s for s, _ in pairs])
    fs.invalidate_cache()

