"""Key management compatible with BigDL PPML: unwrap (and wrap) BigDL's encrypted data-key strings.

BigDL's data keys are *strings*; the ``aes/cbc/pkcs5padding`` format derives its keys from the string's
ASCII bytes. So the :class:`~ppml.crypto.datakey.DataKey` these backends produce and accept holds the
data-key string's ASCII bytes, and the wrapped key is the encrypted-data-key string's ASCII bytes, exactly
as BigDL writes it into every file header and the ``.meta`` file.

=============================  ====================================================================
backend (BigDL name)           encrypted data key
=============================  ====================================================================
``bigdl-plaintext``            ``base64(AES-ECB-PKCS5(primary key, UTF-8 of the data-key string))``
(``spark.bigdl.primaryKey.
<name>.plainText``)
``SimpleKeyManagementService`` 16 digits ``c[i] = (pk[i] + d[i]) mod 10``: **no confidentiality**
``bigdl-azure``                ``base64(RSA-OAEP-SHA1(Key Vault key, the 32 bytes the data-key string encodes))``
=============================  ====================================================================

``bigdl-azure``, BigDL's ``AzureKeyManagementService``, lives in :mod:`ppml.keys.bigdl_azure` with the other
Key Vault code. Wrapped keys read from a BigDL file header carry ``kms="bigdl"``
(:data:`~ppml.crypto.bigdl_cbc.BIGDL_KMS`: the header does not say which KMS made them); every backend built
on :class:`BigdlKms` accepts those.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import warnings
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar, NoReturn

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ppml.crypto.bigdl_cbc import BIGDL_KMS
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import ConfigError, KeyAccessError, NotFoundError, PpmlInsecureWarning
from ppml.keys.kms import KeyManagementService, PrimaryKeyInfo

__all__ = ["BigdlKms", "PlaintextPrimaryKeyKms", "PpmlInsecureWarning", "SimpleKms"]

_FINGERPRINT_LABEL = b"ppml/bigdl/primary-key-fingerprint\0"
_PRIMARY_KEY_SIZES = (16, 24, 32)
_DATA_KEY_RANDOM_BYTES = 32
_SIMPLE_DIGITS = 16
_INSECURE_FLAG = "--insecure-simple-kms"


def _fingerprint(kind: bytes, material: bytes) -> str:
    """A short public identifier of a primary key (never the key itself)."""
    return hashlib.sha256(_FINGERPRINT_LABEL + kind + b"\0" + material).hexdigest()[:16]


def _printable_ascii(data: bytes) -> bool:
    return bool(data) and all(0x20 < b < 0x7F for b in data)


class BigdlKms(KeyManagementService):
    """What BigDL PPML's key management services share: their data keys are BigDL's data-key *strings*.

    A backend holds one primary key, whose public identifier (a fingerprint, or a Key Vault key URL) it
    keeps in ``_key_id`` and stores as ``WrappedKey.key``. It accepts the wrapped keys of BigDL file headers
    (``kms="bigdl"``) besides its own, and checks both with :meth:`_check_origin` before unwrapping.
    """

    data_key_kind: ClassVar[str] = "bigdl"
    #: Why an instance cannot be pickled.
    _unpicklable_because: ClassVar[str] = (
        "it holds a primary key, which must not travel in closures, broadcasts or files; "
        "build the key management service where it is used"
    )
    #: What made this backend's wrapped keys, as errors name it.
    _made_by: ClassVar[str]
    #: What to do when a wrapped key names another primary key.
    _other_key_hint: ClassVar[str] = "give the primary key file the files were written with"
    #: The primary key's public identifier, stored as ``WrappedKey.key``.
    _key_id: str
    #: The primary key's version, where its identifier names one (a versioned Key Vault key URL).
    _key_version: str = ""

    def supports(self, wrapped: WrappedKey) -> bool:
        return wrapped.kms in (BIGDL_KMS, self.name)

    def _check_origin(self, wrapped: WrappedKey) -> None:
        """Refuse ``wrapped`` unless it comes from a BigDL header or from this backend's primary key."""
        if not self.supports(wrapped):
            raise KeyAccessError(f"the data key {wrapped.reference} was not wrapped by {self._made_by}")
        if wrapped.kms == self.name and wrapped.key and wrapped.key != self._key_id:
            raise KeyAccessError(
                f"the data key {wrapped.reference} was wrapped by another primary key (this one is {self._key_id})",
                hint=self._other_key_hint,
            )

    @staticmethod
    def _decode_base64(text: bytes, subject: str) -> bytes:
        """An encrypted data-key string that BigDL writes in base64, decoded."""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise KeyAccessError(f"{subject} is not base64", hint="check the .meta file or the file header") from None

    def generate_data_key(self, key_name: str = "") -> tuple[DataKey, WrappedKey]:
        """A new data-key string and its encrypted form. ``key_name`` is not used: one primary key."""
        key = self._new_data_key()
        return key, self.wrap(key, key_name)

    def _new_data_key(self) -> DataKey:
        """Base64 of 32 random bytes: 44 characters.

        BigDL makes 24-character keys but reads any string; 44 characters give BigDL's key derivation a
        full 16-byte AES key instead of 8 bytes of base64 plus zero padding.
        """
        return DataKey(base64.b64encode(os.urandom(_DATA_KEY_RANDOM_BYTES)))

    def describe_key(self, key_name: str = "") -> PrimaryKeyInfo:
        return PrimaryKeyInfo(self.name, self._key_id, self._key_version, details=self._key_details())

    @abstractmethod
    def _key_details(self) -> dict[str, object]:
        """Public facts about the primary key for :meth:`describe_key`; never its material."""

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled: {self._unpicklable_because}")


class PlaintextPrimaryKeyKms(BigdlKms):
    """BigDL's "plaintext primary key": an AES key given directly in the configuration.

    Matches BigDL's ``spark.bigdl.primaryKey.<name>.plainText`` setting. The encrypted data key is
    ``base64(AES-ECB-PKCS5(primary key, data-key string))``; ECB is what BigDL uses and is acceptable only
    because the wrapped value is a single random key string.

    Parameters
    ----------
    primary_key
        The primary AES key: 16, 24 or 32 raw bytes (the base64 *decoding* of BigDL's setting; see
        :meth:`from_base64`).
    """

    name = "bigdl-plaintext"
    _made_by = "a BigDL plaintext primary key"
    _other_key_hint = "give the primary key that the files were written with"

    def __init__(self, primary_key: bytes) -> None:
        if not isinstance(primary_key, (bytes, bytearray)):
            raise TypeError(f"primary_key must be bytes, not {type(primary_key).__name__}")
        if len(primary_key) not in _PRIMARY_KEY_SIZES:
            raise ConfigError(
                f"the BigDL plaintext primary key must be 16, 24 or 32 bytes, not {len(primary_key)} bytes",
                hint="give the base64 value of spark.bigdl.primaryKey.<name>.plainText, decoded",
            )
        self.__primary_key = bytes(primary_key)
        self._key_id = _fingerprint(b"aes", self.__primary_key)

    @classmethod
    def from_base64(cls, text: str) -> PlaintextPrimaryKeyKms:
        """Build from BigDL's setting value: the base64 encoding of the primary key."""
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError, AttributeError):
            raise ConfigError("the BigDL plaintext primary key is not valid base64",
                              hint="spark.bigdl.primaryKey.<name>.plainText holds a base64 AES key") from None
        return cls(raw)

    @property
    def fingerprint(self) -> str:
        """Public identifier of the primary key, stored as ``WrappedKey.key``."""
        return self._key_id

    def _cipher(self) -> Cipher:
        return Cipher(algorithms.AES(self.__primary_key), modes.ECB())

    def wrap(self, key: DataKey, key_name: str = "") -> WrappedKey:
        """Encrypt ``key`` (a BigDL data-key string) as BigDL does. ``key_name`` is not used: one key."""
        material = key.unsafe_material()
        if not _printable_ascii(material):
            raise ValueError("a BigDL data key must be a printable ASCII string (as generate_data_key makes)")
        padder = padding.PKCS7(algorithms.AES.block_size).padder()
        encryptor = self._cipher().encryptor()
        ciphertext = encryptor.update(padder.update(material) + padder.finalize()) + encryptor.finalize()
        return WrappedKey(self.name, self._key_id, "", base64.b64encode(ciphertext))

    def unwrap(self, wrapped: WrappedKey) -> DataKey:
        self._check_origin(wrapped)
        mismatch = KeyAccessError(
            f"cannot unwrap the data key {wrapped.reference}: the BigDL primary key {self._key_id} "
            "does not match it",
            hint="give the primary key (spark.bigdl.primaryKey.<name>.plainText) the files were written with",
        )
        ciphertext = self._decode_base64(wrapped.wrapped, f"the encrypted data key {wrapped.reference}")
        if not ciphertext or len(ciphertext) % 16:
            raise mismatch
        decryptor = self._cipher().decryptor()
        unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
        try:
            padded = decryptor.update(ciphertext) + decryptor.finalize()
            material = unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            raise mismatch from None
        if not _printable_ascii(material):
            raise mismatch
        return DataKey(material)

    def _key_details(self) -> dict[str, object]:
        return {"fingerprint": self._key_id, "key_size_bits": 8 * len(self.__primary_key)}

    def __repr__(self) -> str:
        return f"PlaintextPrimaryKeyKms(fingerprint={self._key_id}, primary_key=<redacted>)"


def _digits(value: str, what: str, error: type[Exception]) -> str:
    if len(value) != _SIMPLE_DIGITS or not value.isascii() or not value.isdigit():
        raise error(f"the {what} must be exactly {_SIMPLE_DIGITS} decimal digits")
    return value


class SimpleKms(BigdlKms):
    """BigDL's ``SimpleKeyManagementService``, for reading (and writing) its files. **Insecure.**

    The primary key is 16 digits (a 12-digit appId and 4 digits); a data key is 16 random digits and is
    "encrypted" digit by digit, ``c[i] = (pk[i] + d[i]) mod 10``. Worse, BigDL's key derivation turns a
    16-character data key into the all-zero AES key, so files written this way can be decrypted by anyone,
    with or without any key. It exists only to migrate such files; constructing it needs
    ``allow_insecure=True`` (``--insecure-simple-kms`` on the command line) and every construction,
    wrap and unwrap emits a :class:`PpmlInsecureWarning`.

    Parameters
    ----------
    primary_key_file
        A file holding the 16-digit primary key on one line (plus a newline).
    primary_key
        The 16-digit primary key itself; give exactly one of the two.
    allow_insecure
        Must be ``True``.
    """

    name = "SimpleKeyManagementService"
    _made_by = "SimpleKeyManagementService"

    def __init__(self, primary_key_file: str | os.PathLike[str] | None = None, primary_key: str | None = None,
                 allow_insecure: bool = False) -> None:
        if allow_insecure is not True:
            raise ConfigError(
                "BigDL's SimpleKeyManagementService gives no confidentiality and is refused by default",
                hint=f"to read or migrate such files anyway, pass {_INSECURE_FLAG} (allow_insecure=True)",
            )
        if (primary_key_file is None) == (primary_key is None):
            raise ConfigError("SimpleKeyManagementService needs exactly one of primary_key_file or primary_key")
        if primary_key_file is not None:
            primary_key = self._read_key_file(Path(primary_key_file))
        elif not isinstance(primary_key, str):
            raise TypeError(f"primary_key must be a str of digits, not {type(primary_key).__name__}")
        self.__primary_key = _digits(primary_key, "SimpleKeyManagementService primary key", ConfigError)
        self._key_id = _fingerprint(b"simple", self.__primary_key.encode("ascii"))
        self._warn("is in use")

    @staticmethod
    def _read_key_file(path: Path) -> str:
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise NotFoundError(f"the SimpleKeyManagementService primary key file {str(path)!r} does not exist") \
                from None
        except UnicodeDecodeError:
            raise ConfigError(f"the primary key file {str(path)!r} is not ASCII text") from None
        except OSError as exc:
            raise ConfigError(f"cannot read the primary key file {str(path)!r} ({exc.strerror})") from None
        line = text[:-1] if text.endswith("\n") else text
        line = line[:-1] if line.endswith("\r") else line
        if "\n" in line or "\r" in line:
            raise ConfigError(f"the primary key file {str(path)!r} must hold one line")
        try:
            return _digits(line, "primary key in the file", ConfigError)
        except ConfigError as exc:
            raise ConfigError(f"{str(path)!r}: {exc.message}") from None

    @staticmethod
    def _warn(what: str) -> None:
        warnings.warn(
            f"BigDL SimpleKeyManagementService {what}: files it protects have no confidentiality "
            "(anyone can decrypt them); migrate them to an authenticated format with a real KMS",
            PpmlInsecureWarning,
            stacklevel=3,
        )

    @property
    def fingerprint(self) -> str:
        return self._key_id

    def wrap(self, key: DataKey, key_name: str = "") -> WrappedKey:
        self._warn("wraps a data key")
        data = _digits(key.unsafe_material().decode("ascii", "replace"), "SimpleKeyManagementService data key",
                       ValueError)
        pk = self.__primary_key
        wrapped = "".join(str((int(p) + int(d)) % 10) for p, d in zip(pk, data, strict=True))
        return WrappedKey(self.name, self._key_id, "", wrapped.encode("ascii"))

    def unwrap(self, wrapped: WrappedKey) -> DataKey:
        self._warn("unwraps a data key")
        self._check_origin(wrapped)
        encrypted = _digits(wrapped.wrapped.decode("ascii", "replace"),
                            f"encrypted data key {wrapped.reference}", KeyAccessError)
        pk = self.__primary_key
        data = "".join(str((int(c) - int(p)) % 10) for p, c in zip(pk, encrypted, strict=True))
        return DataKey(data.encode("ascii"))

    def _new_data_key(self) -> DataKey:
        """16 random digits, as BigDL's SimpleKeyManagementService makes them."""
        return DataKey(str(secrets.randbelow(10**_SIMPLE_DIGITS)).zfill(_SIMPLE_DIGITS).encode("ascii"))

    def _key_details(self) -> dict[str, object]:
        return {"fingerprint": self._key_id, "insecure": True}

    def __repr__(self) -> str:
        return f"SimpleKms(fingerprint={self._key_id}, primary_key=<redacted>, insecure)"
