"""Key stores and data keys for tests, made one way: fast Argon2id settings (never for real stores).

``make_keystore`` creates a store with primary keys at version 1 (and, when asked, the passphrase in a 0600
file, the way executors and the broker read it); ``make_data_key`` saves a data-key file and returns the
key and its wrapped copy.
"""

from __future__ import annotations

from pathlib import Path

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.local import LocalKms

FAST_KDF = {"memory_kib": 1024, "iterations": 1, "lanes": 1}


def make_keystore(path: Path, passphrase: str, *names: str, passphrase_file: Path | None = None) -> LocalKms:
    """A key store at ``path`` holding primary keys ``names``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kms = LocalKms(path, passphrase)
    kms.create_store(kdf=FAST_KDF)
    for name in names:
        kms.create_key(name)
    if passphrase_file is not None:
        passphrase_file.write_text(passphrase)
        passphrase_file.chmod(0o600)
    return kms


def make_data_key(kms, key_name: str, path: Path) -> tuple[DataKey, WrappedKey]:
    """A new data key wrapped by ``kms``'s ``key_name``, saved (wrapped only) to the data-key file ``path``."""
    key, wrapped = kms.generate_data_key(key_name)
    DataKeyFile.new(key.key_id, (wrapped,)).save(path)
    return key, wrapped
