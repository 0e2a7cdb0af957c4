"""The key management service interface and the registry of backends.

A backend holds primary keys and wraps/unwraps data keys with them. Callers never see primary-key
material, and see data-key material only through :class:`~ppml.crypto.datakey.DataKey` handles. Backends
are registered by name and imported only when used, like fsspec's protocols; a backend whose optional
dependencies are missing says which extra to install.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import ConfigError, UsageError
from ppml.registry import Registry

__all__ = [
    "KeyManagementService",
    "PrimaryKeyInfo",
    "KeyVersionInfo",
    "register_kms",
    "kms_class",
    "open_kms",
    "available_kms",
    "data_key_kind",
]


@dataclass(frozen=True)
class KeyVersionInfo:
    """One version of a primary key.

    Parameters
    ----------
    version
        The version as the backend names it.
    state
        ``"enabled"``, or the backend's word for a version that no longer unwraps: ``"retired"`` (local key
        store, PKCS#11) or ``"disabled"`` (Azure Key Vault, which retires a version by disabling it).
    created
        ISO 8601 creation time, or ``""`` where the backend keeps none (PKCS#11).
    """

    version: str
    state: str
    created: str


@dataclass(frozen=True)
class PrimaryKeyInfo:
    """Public facts about a primary key; never its material."""

    kms: str
    name: str
    current_version: str
    versions: tuple[KeyVersionInfo, ...] = field(default=())
    details: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "kms": self.kms,
            "name": self.name,
            "current_version": self.current_version,
            "versions": [vars(v) for v in self.versions],
            **({"details": self.details} if self.details else {}),
        }


class KeyManagementService(ABC):
    """A place that holds primary keys and wraps data keys with them.

    Subclasses set :attr:`name` (stored in every :class:`WrappedKey` they produce) and implement
    :meth:`wrap` and :meth:`unwrap`; backends that manage keys also implement the key-management
    methods, which otherwise raise :class:`~ppml.errors.ConfigError`.
    """

    name: ClassVar[str]
    #: What kind of data key this backend wraps: ``"ppml"`` (32 random bytes, for ppml's formats) or
    #: ``"bigdl"`` (BigDL's data-key strings, for its ``aes/cbc/pkcs5padding`` format).
    data_key_kind: ClassVar[str] = "ppml"
    #: Whether callers may keep unwrapped keys for the life of the process. Backends whose releases expire
    #: (the key broker) set ``False`` and cache keys themselves for as long as they are valid.
    cacheable: ClassVar[bool] = True

    def supports(self, wrapped: WrappedKey) -> bool:
        """Whether this backend can try to unwrap ``wrapped``."""
        return wrapped.kms == self.name

    @abstractmethod
    def wrap(self, key: DataKey, key_name: str) -> WrappedKey:
        """Wrap ``key`` with the current version of primary key ``key_name``."""

    @abstractmethod
    def unwrap(self, wrapped: WrappedKey) -> DataKey:
        """Unwrap with the primary-key version named in ``wrapped``.

        Raises :class:`~ppml.errors.KeyAccessError` (or a subclass) naming the key when it cannot.
        """

    def key_identifier(self, key_name: str) -> str:
        """What this backend stores as ``WrappedKey.key`` for primary key ``key_name``.

        The name itself by default; backends whose names are ambiguous across instances store something
        longer (Azure Key Vault: the versionless key URL, which names the vault).
        """
        return key_name

    def canonical_key(self, key: str) -> str:
        """``WrappedKey.key`` in the one form this backend gives it, for matching it against policies.

        The identity by default; backends that accept several spellings of one key (Azure Key Vault URLs)
        normalise them, so that no spelling can slip past a policy written for the key.
        """
        return key

    def generate_data_key(self, key_name: str) -> tuple[DataKey, WrappedKey]:
        """A new data key and its wrapped copy."""
        key = DataKey.generate()
        return key, self.wrap(key, key_name)

    def _unsupported(self, what: str) -> ConfigError:
        return ConfigError(f"the {self.name!r} key management service does not support {what}")

    def create_key(self, key_name: str) -> PrimaryKeyInfo:
        raise self._unsupported("creating primary keys")

    def rotate_key(self, key_name: str) -> PrimaryKeyInfo:
        raise self._unsupported("rotating primary keys")

    def describe_key(self, key_name: str) -> PrimaryKeyInfo:
        raise self._unsupported("describing primary keys")

    def list_keys(self) -> list[PrimaryKeyInfo]:
        raise self._unsupported("listing primary keys")

    def retire_version(self, key_name: str, version: str) -> PrimaryKeyInfo:
        raise self._unsupported("retiring key versions")


_BACKENDS: Registry[KeyManagementService] = Registry(
    "key management service",
    known={
        "local": "ppml.keys.local:LocalKms",
        "bigdl-plaintext": "ppml.keys.bigdl:PlaintextPrimaryKeyKms",
        "SimpleKeyManagementService": "ppml.keys.bigdl:SimpleKms",
        "azure": ("ppml.keys.azure:AzureKeyVaultKms", "azure"),
        "bigdl-azure": ("ppml.keys.bigdl_azure:BigdlAzureKms", "azure"),
        "pkcs11": ("ppml.keys.pkcs11:Pkcs11Kms", "hsm"),
        "broker": ("ppml.keys.broker_client:BrokerKms", "attest"),
    },
    aliases={"simplekms": "SimpleKeyManagementService", "azurekeymanagementservice": "azure"},
)


def register_kms(cls: type[KeyManagementService], *, replace: bool = False) -> None:
    """Register a backend class under ``cls.name``; refuses to replace one silently."""
    _BACKENDS.register(cls, replace=replace)


def kms_class(name: str) -> type[KeyManagementService]:
    """The backend class registered as ``name`` (case-insensitive; BigDL's names accepted)."""
    return _BACKENDS.get(name)


def open_kms(name: str, **settings: object) -> KeyManagementService:
    """An instance of backend ``name`` configured with ``settings`` (each backend documents its own)."""
    return kms_class(name)(**settings)


def available_kms() -> list[str]:
    return _BACKENDS.names()


def data_key_kind(envelope: Sequence[WrappedKey]) -> str:
    """The kind of data key an envelope holds (see :attr:`KeyManagementService.data_key_kind`).

    BigDL file headers name no backend (``kms="bigdl"``); their keys are BigDL keys.
    """
    from ppml.crypto.bigdl_cbc import BIGDL_KMS

    kinds = {"bigdl" if w.kms == BIGDL_KMS else kms_class(w.kms).data_key_kind for w in envelope}
    if len(kinds) != 1:
        raise UsageError("the wrapped copies of one data key disagree on its kind" if kinds else
                         "no wrapped copy of the data key is given")
    return kinds.pop()
