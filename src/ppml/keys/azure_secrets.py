"""Azure Key Vault secrets: passwords for key stores and keystores, read, stored and generated.

The command line's ``ppml azure secret`` and the ``azure-secret:`` secret source
(:func:`ppml.keys.settings.read_secret_source`) use these; the vault, the identity and the errors are those
of :mod:`ppml.keys.azure_vault`. Reading needs the ``get`` secret permission, storing ``set``.
"""

from __future__ import annotations

import secrets as _secrets
import string
from typing import Any

from ppml.errors import KeyAccessError, NotFoundError, UsageError
from ppml.keys.azure_vault import check_object_name, connect, split_object_id

__all__ = ["generate_password", "get_secret", "read_secret_reference", "secret_exists", "set_secret"]

_PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_"


def _secret_client(vault: str | None, credential: Any = None, **options: Any):
    from azure.keyvault.secrets import SecretClient

    conn = connect(vault, credential, **options)
    return conn, SecretClient(conn.url, conn.credential(), **conn.options)


def get_secret(vault: str | None, name: str, *, version: str | None = None, credential: Any = None,
               **options: Any) -> str:
    """The value of secret ``name`` (its latest version unless ``version``) in ``vault``.

    ``options``: ``client_id``, ``connection_verify``, ``verify_challenge_resource`` and SDK client options,
    as for :class:`~ppml.keys.azure.AzureKeyVaultKms`.
    """
    check_object_name(name, "secret")
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
    check_object_name(name, "secret")
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
    check_object_name(name, "secret")
    if not isinstance(value, str) or not value:
        raise UsageError("a secret value must be a non-empty string")
    conn, client = _secret_client(vault, credential, **options)
    secret = conn.call(lambda: client.set_secret(name, value, content_type=content_type), kind="secrets",
                       permission="set", subject=f"secret {name!r}")
    return conn.url, secret.properties.version or ""


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
            vault, name, version = split_object_id(text, "secrets")
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
