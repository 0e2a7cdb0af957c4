"""Key access settings that can travel to other processes (Spark executors) without any secret.

Secrets are named by *source*, resolved by each process for itself: ``env:VAR`` (an environment variable
of that process), ``file:PATH`` (a file it can read, e.g. a mounted Kubernetes secret),
``azure-secret:VAULT/NAME`` (a Key Vault secret, read with the process's own Azure identity; also
``azure-secret:https://VAULT.vault.azure.net/secrets/NAME[/VERSION]``) or ``-`` (standard input, for the
command line only).
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from ppml.errors import ConfigError, UsageError
from ppml.keys.keyring import KeyRing
from ppml.keys.kms import KeyManagementService, open_kms

__all__ = ["KeySettings", "read_secret_source"]


def read_secret_source(source: str, *, what: str) -> str:
    """A secret from ``env:VAR``, ``file:PATH``, ``azure-secret:VAULT/NAME`` or ``-``; a literal value is refused."""
    if source == "-":
        return sys.stdin.readline().strip()
    kind, _, rest = source.partition(":")
    if kind == "azure-secret" and rest:
        try:
            from ppml.keys.azure_secrets import read_secret_reference
        except ImportError as exc:
            raise ConfigError(f"the {what} source {source} needs the Azure SDK, which is not installed ({exc.name})",
                              hint="pip install 'ppml[azure]'") from None
        return read_secret_reference(rest, what=what).strip()
    if kind == "env" and rest:
        if not os.environ.get(rest):
            raise ConfigError(f"the environment variable {rest} for the {what} is not set in this process")
        return os.environ[rest].strip()
    if kind == "file" and rest:
        path = Path(rest).expanduser()
        if not path.is_file():
            raise ConfigError(f"the {what} file {path} does not exist")
        return path.read_text(encoding="utf-8").strip()
    raise UsageError(
        f"the {what} must be given as env:VAR, file:PATH, azure-secret:VAULT/NAME or '-', not as a value",
        hint="secrets on a command line or in Spark options end up in shell history, process lists and "
             "the Spark UI; e.g. export PRIMARY_KEY=...; then name it as env:PRIMARY_KEY",
    )


_RINGS: dict["KeySettings", KeyRing] = {}
_RINGS_LOCK = threading.Lock()


@dataclass(frozen=True)
class KeySettings:
    """Which key management services a process may use, and where their secrets come from.

    Parameters
    ----------
    keystore
        Local key store path (default: ``$PPML_KEYSTORE`` or ``~/.config/ppml/keystore.json``).
    keystore_password_file
        File holding the key store passphrase (default: ``$PPML_KEYSTORE_PASSWORD``).
    bigdl_primary_key_plaintext
        Source (``env:VAR`` / ``file:PATH``) of a BigDL plaintext primary key, base64.
    simple_kms_primary_key_file, insecure_allow_simple_kms
        BigDL SimpleKMS primary-key file; refused unless explicitly allowed (no confidentiality).
    keystore_password
        Source of the key store passphrase (``env:VAR``, ``file:PATH``, ``azure-secret:VAULT/NAME``), used
        when ``keystore_password_file`` is not given.
    azure_vault, azure_client_id
        The Azure Key Vault whose keys may unwrap data keys (name or URL; default ``$PPML_AZURE_VAULT``),
        and the client id of the managed or workload identity to use (default ``$AZURE_CLIENT_ID``).
        Each process authenticates with its own ``DefaultAzureCredential``; no token travels.
    bigdl_azure_key_url
        BigDL ``AzureKeyManagementService`` primary key: the Key Vault key URL, or a file holding it.
    broker_url, broker_ca, broker_attester, broker_attester_settings
        A key broker (``https://...``, default ``$PPML_BROKER_URL``) that releases data keys to this
        process after attestation; the CA file that verifies its TLS certificate (``$PPML_BROKER_CA``);
        the attester that makes this process's evidence (``$PPML_BROKER_ATTESTER``) and its settings as
        JSON text (``$PPML_BROKER_ATTESTER_SETTINGS``). When set, every wrapped key goes to the broker.
    """

    keystore: str | None = None
    keystore_password_file: str | None = None
    bigdl_primary_key_plaintext: str | None = None
    simple_kms_primary_key_file: str | None = None
    insecure_allow_simple_kms: bool = False
    keystore_password: str | None = None
    azure_vault: str | None = None
    azure_client_id: str | None = None
    bigdl_azure_key_url: str | None = None
    broker_url: str | None = None
    broker_ca: str | None = None
    broker_attester: str | None = None
    broker_attester_settings: str | None = None

    def broker_kms(self) -> KeyManagementService | None:
        """The key broker client for ``broker_url`` (or ``$PPML_BROKER_URL``), or ``None`` when neither is set."""
        url = self.broker_url or os.environ.get("PPML_BROKER_URL")
        if not url:
            return None
        return open_kms("broker", url=url, ca=self.broker_ca or os.environ.get("PPML_BROKER_CA") or None,
                        attester=self.broker_attester or os.environ.get("PPML_BROKER_ATTESTER", ""),
                        attester_settings=self.broker_attester_settings
                        or os.environ.get("PPML_BROKER_ATTESTER_SETTINGS") or None)

    def bigdl_backends(self) -> list[KeyManagementService]:
        backends: list[KeyManagementService] = []
        if self.bigdl_primary_key_plaintext:
            text = read_secret_source(self.bigdl_primary_key_plaintext, what="BigDL plaintext primary key")
            try:
                material = base64.b64decode(text, validate=True)
            except binascii.Error:
                raise ConfigError("the BigDL plaintext primary key is not valid base64") from None
            backends.append(open_kms("bigdl-plaintext", primary_key=material))
        if self.simple_kms_primary_key_file:
            backends.append(open_kms("SimpleKeyManagementService", primary_key_file=self.simple_kms_primary_key_file,
                                     allow_insecure=self.insecure_allow_simple_kms))
        if self.bigdl_azure_key_url:
            source = self.bigdl_azure_key_url
            location = {"key_url": source} if source.startswith("https://") else {"primary_key_file": source}
            backends.append(open_kms("bigdl-azure", client_id=self.azure_client_id, **location))
        return backends

    def azure_kms(self) -> KeyManagementService | None:
        """The Key Vault backend of ``azure_vault`` (or ``$PPML_AZURE_VAULT``), or ``None`` when neither is set."""
        vault = self.azure_vault or os.environ.get("PPML_AZURE_VAULT")
        if not vault:
            return None
        return open_kms("azure", vault=vault, client_id=self.azure_client_id)

    def local_kms(self, passphrase=None) -> KeyManagementService:
        if passphrase is None and self.keystore_password_file:
            path = Path(self.keystore_password_file).expanduser()

            def passphrase() -> str:
                try:
                    return path.read_text(encoding="utf-8").rstrip("\n")
                except OSError as exc:
                    raise ConfigError(f"cannot read the key store passphrase file {path}: {exc.strerror}") from None

        elif passphrase is None and self.keystore_password:
            source = self.keystore_password

            def passphrase() -> str:
                return read_secret_source(source, what="key store passphrase")

        return open_kms("local", keystore=self.keystore, passphrase=passphrase)

    def _open_backend(self, name: str) -> KeyManagementService | None:
        if name == "local":
            return self.local_kms()
        if name == "azure":
            return self.azure_kms()
        return None

    def keyring(self) -> KeyRing:
        """This process's key ring for these settings (built once, so unwrapped keys are cached)."""
        with _RINGS_LOCK:
            ring = _RINGS.get(self)
            if ring is None:
                broker = self.broker_kms()
                backends = ([broker] if broker else []) + self.bigdl_backends()
                ring = _RINGS[self] = KeyRing(backends, self._open_backend)
            return ring
