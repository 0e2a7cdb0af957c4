"""The ``bigdl-azure`` backend: BigDL PPML's ``AzureKeyManagementService`` data keys, through Key Vault.

BigDL's primary-key file holds a Key Vault key URL; an encrypted data key is
``base64(RSA-OAEP-SHA1(32 random bytes))``; the data key BigDL's ``aes/cbc/pkcs5padding`` files use is the
*string* ``base64(32 bytes)``, so the :class:`~ppml.crypto.datakey.DataKey` returned holds its ASCII bytes.
The vault, the identity and the errors are those of :mod:`ppml.keys.azure_vault`.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from pathlib import Path
from typing import Any

from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from ppml.crypto.bigdl_cbc import BIGDL_KMS, MAX_KEY_STRING_SIZE
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import ConfigError, KeyAccessError, NotFoundError, PpmlError
from ppml.keys.azure_vault import UNPICKLABLE_BECAUSE, Connection, split_object_id
from ppml.keys.bigdl import BigdlKms

__all__ = ["BigdlAzureKms"]


class BigdlAzureKms(BigdlKms):
    """BigDL PPML's ``AzureKeyManagementService`` data keys: RSA-OAEP (SHA-1) through Key Vault.

    Give the Key Vault key URL BigDL's primary-key file holds (``https://<vault>.vault.azure.net/keys/<name>/
    <version>``), directly or as that file. A versionless URL means the key's current version, which
    stops matching older data keys once the key is rotated.

    Parameters
    ----------
    key_url, primary_key_file
        The key URL, or BigDL's primary-key file holding it on one line; exactly one.
    credential, client_id, connection_verify, verify_challenge_resource, **client_options
        As for :class:`~ppml.keys.azure.AzureKeyVaultKms`.
    """

    name = "bigdl-azure"
    _unpicklable_because = UNPICKLABLE_BECAUSE
    _made_by = "BigDL's AzureKeyManagementService"

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
            vault, name, version = split_object_id(str(key_url), "keys")
        except ValueError:
            raise ConfigError(f"{key_url!r} is not a Key Vault key URL",
                              hint="BigDL's Azure primary key is the key's URL, "
                                   "https://<vault>.vault.azure.net/keys/<name>/<version>") from None
        self.key_url = self._key_id = f"{vault}/keys/{name}" + (f"/{version}" if version else "")
        self._key_version = version or ""
        self._conn = Connection(vault, credential, client_id=client_id, connection_verify=connection_verify,
                                verify_challenge_resource=verify_challenge_resource, **client_options)
        self._client: CryptographyClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BigdlAzureKms(key_url={self.key_url!r})"

    def _crypto(self) -> CryptographyClient:
        with self._lock:
            if self._client is None:
                self._client = CryptographyClient(self.key_url, self._conn.credential(), **self._conn.options)
            return self._client

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
        if len(text) > MAX_KEY_STRING_SIZE:
            raise ConfigError(
                f"{self.key_url} is an RSA-{8 * len(encrypted)} key: its encrypted data keys ({len(text)} characters) "
                f"do not fit a BigDL file header ({MAX_KEY_STRING_SIZE})",
                hint="BigDL's Azure KMS uses RSA-2048 keys: az keyvault key create --kty RSA --size 2048 ...")
        return WrappedKey(self.name, self.key_url, "", text)

    def unwrap(self, wrapped: WrappedKey) -> DataKey:
        self._check_origin(wrapped)
        reference = wrapped.reference if wrapped.kms != BIGDL_KMS else "the BigDL encrypted data key"
        encrypted = self._decode_base64(wrapped.wrapped, reference)
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

    def _key_details(self) -> dict[str, object]:
        return {"key_url": self.key_url}
