"""Hazardous materials: raw data keys, envelopes, key rings, key management services, formats and codecs.

.. warning::
   These are the parts the safe recipes in :mod:`ppml` are built from. Used directly they let a caller hold
   a data key, write files in any format with any key, or skip the checks the recipes make (that a format
   encrypts, that a key is of the kind a format needs, that an output appears only when complete). Prefer
   ``ppml.open``, ``ppml.encrypt`` and ``PPMLContext``; come here to build a new format, a new key
   management service or a new attester, and keep :class:`DataKey` objects inside the process: they refuse
   to be pickled, and :meth:`DataKey.unsafe_material` is the only way to their bytes.
"""

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import FileFormat, FileInfo, available_formats, detect_format, get_format, register_format
from ppml.crypto.gcm_stream import DecryptingReader, EncryptingWriter
from ppml.io.encryption import Encryption, prepare_encryption
from ppml.io.files import open_decrypted, open_encrypted
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.keyring import KeyRing
from ppml.keys.kms import KeyManagementService, available_kms, open_kms, register_kms

__all__ = [
    "DataKey",
    "WrappedKey",
    "FileFormat",
    "FileInfo",
    "available_formats",
    "detect_format",
    "get_format",
    "register_format",
    "DecryptingReader",
    "EncryptingWriter",
    "Encryption",
    "prepare_encryption",
    "open_decrypted",
    "open_encrypted",
    "DataKeyFile",
    "KeyRing",
    "KeyManagementService",
    "available_kms",
    "open_kms",
    "register_kms",
]
