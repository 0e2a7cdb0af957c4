"""BigDL PPML's v2 row-file format, ``aes/cbc/pkcs5padding``: read with its MAC verified, written on request.

Byte layout of every encrypted part file (BigDL 2.3+; integers are big-endian int32)::

    offset  size  field
    0       4     L = length of the encrypted-data-key string (0 if none), at most 376
    4       4     IV length, always 16
    8       L     the encrypted data key: the same ASCII string BigDL stores in the directory's ``.meta``
    8+L     16    random IV
    24+L    ...   0x80 fill bytes up to offset 400 (the header is always exactly 400 bytes)
    400     N     AES-128-CBC with PKCS#5 padding over the whole plaintext (one stream, one IV)
    400+N   32    HMAC-SHA256 over the ciphertext only (not the header)

Keys come from the data-key *string* (its ASCII bytes, called ``secret``, which is what
:meth:`~ppml.crypto.datakey.DataKey.unsafe_material` holds for BigDL keys): the HMAC key is
``secret[0:16]`` and the AES-128 key ``secret[16:32]``, each zero-padded to 16 bytes when ``secret`` is
shorter. A 16-digit SimpleKMS data key therefore encrypts with the all-zero AES key.

What the format protects, and what it does not
----------------------------------------------
The HMAC covers the ciphertext, so any change to the body or tag is detected before a byte of plaintext is
returned. The header is *not* authenticated, and that includes the IV: in CBC the first plaintext block is
the decrypted first ciphertext block XOR the IV, so whoever can write the file can flip any bit of its
first 16 plaintext bytes by flipping the same bit of the IV, undetected (a row's first 16 bytes: an id, a
name, an amount). Readers warn about it every time (:class:`~ppml.errors.UnprotectedDataWarning`); files
that must be trusted are re-encrypted into ``aes_gcm_stream``. The encrypted data key in the header is not
authenticated either, and the HMAC key and the AES key are independent halves of the secret: a wrong data
key whose first 16 bytes happen to be right passes the HMAC and is caught only by the padding check (about
255 times in 256). BigDL files are not splittable. ppml writes this format only when it is asked for by
name; its own default is ``aes_gcm_stream``.

The ``.meta`` sidecar
---------------------
BigDL writes ``<output dir>/.meta`` after every encrypted write; :func:`encode_meta` and
:func:`decode_meta` produce and parse it without any file I/O.

:mod:`ppml.crypto.bigdl_cbc_format` puts this codec behind the :class:`~ppml.crypto.formats.FileFormat`
interface.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ppml.crypto._reader import SealingWriter, SeekablePlaintext
from ppml.crypto.datakey import DataKey
from ppml.errors import CorruptHeaderError, IntegrityError

__all__ = [
    "looks_like_header",
    "SUFFIX",
    "BigdlCbcReader",
    "BigdlCbcWriter",
    "BigdlHeader",
    "read_header",
    "derive_keys",
    "encode_meta",
    "decode_meta",
    "HEADER_SIZE",
    "IV_SIZE",
    "MAC_SIZE",
    "MAX_KEY_STRING_SIZE",
    "META_FILE_NAME",
    "BIGDL_KMS",
]

HEADER_SIZE = 400
IV_SIZE = 16
MAC_SIZE = 32
BLOCK_SIZE = 16
FILL_BYTE = 0x80
_LENGTHS = struct.Struct(">ii")
MAX_KEY_STRING_SIZE = HEADER_SIZE - _LENGTHS.size - IV_SIZE  # 376
META_FILE_NAME = ".meta"
META_FIELD = "encryptedDataKey"
BIGDL_KMS = "bigdl"
"""The ``kms`` of the wrapped key read from a BigDL header: the header does not say which KMS made it."""

CHUNK_SIZE = 1024 * 1024
_MAX_CHUNKS = 1 << 16  # bounds the per-chunk index to 3 MiB; beyond 64 GiB the chunks grow instead
_INDEX_ENTRY = 32 + BLOCK_SIZE  # sha-256 of the chunk || its last ciphertext block
SUFFIX = ".cbc"

_MISMATCH = "the HMAC does not match: the file was modified, truncated, or the data key is wrong"
_MISMATCH_HINT = ("check that the data key (or the directory's .meta) belongs to this file; "
                  "if it does, the file was damaged: restore it from a trusted copy")


def derive_keys(secret: bytes) -> tuple[bytes, bytes]:
    """BigDL's key derivation: ``(hmac_key, aes_key)`` = ``secret[0:16]``, ``secret[16:32]``, zero-padded."""
    return secret[0:16].ljust(16, b"\0"), secret[16:32].ljust(16, b"\0")


def _is_key_string(data: bytes) -> bool:
    """Printable ASCII, as every BigDL encrypted-data-key string (base64, digits, UUID) is."""
    return all(0x20 < b < 0x7F for b in data)


@dataclass(frozen=True)
class BigdlHeader:
    """The 400-byte header of a BigDL v2 file."""

    encrypted_data_key: bytes
    iv: bytes


def _read_exactly(raw: BinaryIO, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = raw.read(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def looks_like_header(head: bytes) -> bool:
    if len(head) < _LENGTHS.size:
        return False
    length, iv_length = _LENGTHS.unpack_from(head)
    return 0 <= length <= MAX_KEY_STRING_SIZE and iv_length == IV_SIZE


def read_header(raw: BinaryIO, *, name: str = "<stream>") -> BigdlHeader:
    """Parse the header at the current position of ``raw``; leaves it at the start of the ciphertext.

    Raises :class:`~ppml.errors.CorruptHeaderError` naming ``name`` when the header is not a valid
    v2 header (wrong length fields, a non-ASCII key string, fill bytes other than ``0x80``, truncated).
    """

    def corrupt(what: str) -> CorruptHeaderError:
        return CorruptHeaderError(
            f"{name}: not a valid BigDL aes/cbc/pkcs5padding file ({what})",
            path=name,
            hint="BigDL v2 '.cbc' files start with a 400-byte header; this one is damaged, was written by an "
                 "older BigDL (2.1-2.2), or is not a BigDL file",
        )

    head = _read_exactly(raw, HEADER_SIZE)
    if len(head) < _LENGTHS.size:
        raise corrupt(f"the file is only {len(head)} bytes long")
    length, iv_length = _LENGTHS.unpack_from(head)
    if iv_length != IV_SIZE:
        raise corrupt(f"the IV length field is {iv_length}, not {IV_SIZE}")
    if not 0 <= length <= MAX_KEY_STRING_SIZE:
        raise corrupt(f"the encrypted data key length {length} is outside 0..{MAX_KEY_STRING_SIZE}")
    if len(head) < HEADER_SIZE:
        raise corrupt(f"the header is truncated ({len(head)} of {HEADER_SIZE} bytes)")
    key_end = _LENGTHS.size + length
    encrypted_key = head[_LENGTHS.size : key_end]
    if not _is_key_string(encrypted_key):
        raise corrupt("the encrypted data key is not a printable ASCII string")
    fill = head[key_end + IV_SIZE :]
    if fill.count(FILL_BYTE) != len(fill):
        raise corrupt("the header fill after the IV is not all 0x80 bytes")
    return BigdlHeader(encrypted_key, head[key_end : key_end + IV_SIZE])


def encode_header(encrypted_data_key: bytes, iv: bytes) -> bytes:
    """The 400-byte header for ``encrypted_data_key`` (ASCII, at most 376 bytes) and a 16-byte ``iv``."""
    if not isinstance(encrypted_data_key, bytes):
        raise TypeError("the encrypted data key must be bytes")
    if len(encrypted_data_key) > MAX_KEY_STRING_SIZE:
        raise ValueError(f"a BigDL header holds an encrypted data key of at most {MAX_KEY_STRING_SIZE} bytes, "
                         f"not {len(encrypted_data_key)}")
    if not _is_key_string(encrypted_data_key):
        raise ValueError("a BigDL header holds the encrypted data key as a printable ASCII string; "
                         "this wrapped key is binary (wrap it with a BigDL-compatible KMS)")
    if not isinstance(iv, bytes) or len(iv) != IV_SIZE:
        raise ValueError(f"the IV must be {IV_SIZE} bytes")
    head = _LENGTHS.pack(len(encrypted_data_key), IV_SIZE) + encrypted_data_key + iv
    return head.ljust(HEADER_SIZE, bytes([FILL_BYTE]))


def encode_meta(encrypted_data_key: str) -> bytes:
    """The ``.meta`` sidecar BigDL writes next to encrypted part files.

    Exactly what Jackson's default pretty printer emits, plus a newline::

        {
          "encryptedDataKey" : "<encrypted_data_key>"
        }
    """
    if not isinstance(encrypted_data_key, str):
        raise TypeError(f"encrypted_data_key must be a str, not {type(encrypted_data_key).__name__}")
    if not encrypted_data_key or not encrypted_data_key.isascii() or not encrypted_data_key.isprintable():
        raise ValueError("encrypted_data_key must be a non-empty printable ASCII string")
    return f'{{\n  "{META_FIELD}" : {json.dumps(encrypted_data_key)}\n}}\n'.encode("ascii")


def decode_meta(data: bytes, *, name: str = META_FILE_NAME) -> str:
    """The encrypted-data-key string from a ``.meta`` file's bytes (any JSON layout is accepted).

    Raises :class:`~ppml.errors.CorruptHeaderError` naming ``name`` when ``data`` is not a JSON object
    with a non-empty ``encryptedDataKey`` string.
    """
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptHeaderError(f"{name}: not a valid BigDL .meta file (not JSON: {type(exc).__name__})",
                                 path=name) from None
    value = obj.get(META_FIELD) if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value:
        raise CorruptHeaderError(
            f"{name}: not a valid BigDL .meta file (no {META_FIELD!r} string)", path=name,
            hint="a BigDL .meta file is a JSON object with an \"encryptedDataKey\" field",
        )
    return value


class BigdlCbcWriter(SealingWriter):
    """A binary file object that encrypts what is written to it into ``raw`` as a BigDL v2 file.

    The header is written at once; ciphertext is streamed (memory use is one block plus what the caller
    writes). ``close()`` writes the final padded block and the HMAC and flushes ``raw`` without closing
    it. Leaving a ``with`` block by an exception writes neither, so the file never passes as complete:
    readers reject it.

    Parameters
    ----------
    raw
        Writable binary file object receiving the file.
    key
        The data key; its material is BigDL's data-key string (ASCII bytes).
    encrypted_data_key
        The encrypted-data-key string for the header, as ASCII bytes (``b""`` for none).
    iv
        A fixed IV, for known-answer tests only; by default a random one.
    """

    def __init__(self, raw: BinaryIO, key: DataKey, encrypted_data_key: bytes, *, iv: bytes | None = None) -> None:
        super().__init__()
        self._aborted = True  # until the header is out, close() must write nothing
        iv = os.urandom(IV_SIZE) if iv is None else iv
        header = encode_header(encrypted_data_key, iv)
        mac_key, aes_key = derive_keys(key.unsafe_material())
        self._encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
        self._padder = padding.PKCS7(algorithms.AES.block_size).padder()
        self._mac = hmac.new(mac_key, digestmod=hashlib.sha256)
        self._raw = raw
        self._raw.write(header)
        self._written = 0
        self._aborted = False

    def tell(self) -> int:
        return self._written

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a closed BigdlCbcWriter")
        view = memoryview(data).cast("B")
        ciphertext = self._encryptor.update(self._padder.update(view))
        if ciphertext:
            self._mac.update(ciphertext)
            self._raw.write(ciphertext)
        self._written += len(view)
        return len(view)

    def _seal(self) -> None:
        final = self._encryptor.update(self._padder.finalize()) + self._encryptor.finalize()
        self._mac.update(final)
        self._raw.write(final + self._mac.digest())
        self._raw.flush()

    def _release(self) -> None:
        self._encryptor = self._padder = self._mac = None


class BigdlCbcReader(SeekablePlaintext):
    """A seekable, read-only binary file object over a BigDL v2 file, yielding only authenticated plaintext.

    Opening it reads the whole ciphertext once, in chunks, to check the HMAC (in constant time) and the
    padding; nothing is decrypted for the caller before both pass. Reads then decrypt chunk by chunk.
    To make sure the second pass reads the very bytes the first one authenticated (a file on shared or
    remote storage may change between them), the first pass records a SHA-256 digest of every chunk and
    each chunk is checked against it before it is decrypted: a changed chunk raises
    :class:`~ppml.errors.IntegrityError` instead of returning plaintext. Every byte ``read`` returns is
    therefore authentic. Memory use is one chunk (1 MiB, larger for files over 64 GiB) plus 48 bytes per
    chunk. ``close()`` does not close ``raw``.

    Parameters
    ----------
    raw
        Seekable binary file object; the whole object is the encrypted file.
    key
        The data key (BigDL's data-key string as bytes).
    name
        Name of the file, used in error messages.
    """

    def __init__(self, raw: BinaryIO, key: DataKey, *, name: str = "<stream>") -> None:
        super().__init__()
        if not raw.seekable():
            raise ValueError(f"{name}: reading a BigDL aes/cbc/pkcs5padding file needs a seekable file object")
        self._name = name
        self._raw = raw
        raw.seek(0)
        self.header = read_header(raw, name=name)
        file_size = raw.seek(0, io.SEEK_END)
        body = file_size - HEADER_SIZE - MAC_SIZE
        if body < BLOCK_SIZE or body % BLOCK_SIZE:
            raise self._mismatch()
        self._body = body
        self._chunk = max(CHUNK_SIZE, -(-body // (_MAX_CHUNKS * BLOCK_SIZE)) * BLOCK_SIZE)
        self._count = -(-body // self._chunk)
        mac_key, self._aes_key = derive_keys(key.unsafe_material())
        self._index = bytearray()
        self.size = self._authenticate(mac_key)
        self._pos = 0
        self._loaded = -1
        self._data = b""

    def _mismatch(self) -> IntegrityError:
        return IntegrityError(f"{self._name}: {_MISMATCH}", path=self._name, segment=None, hint=_MISMATCH_HINT)

    def _changed(self, index: int) -> IntegrityError:
        return IntegrityError(
            f"{self._name}: the file changed while it was being read (chunk {index} of {self._count} no longer "
            "matches the authenticated ciphertext)",
            path=self._name, segment=None,
            hint="make sure nothing writes to the file while it is read; if it persists, the storage is "
                 "returning inconsistent data",
        )

    def _chunk_iv(self, index: int) -> bytes:
        if index == 0:
            return self.header.iv
        start = (index - 1) * _INDEX_ENTRY + 32
        return bytes(self._index[start : start + BLOCK_SIZE])

    def _decrypt(self, iv: bytes, ciphertext) -> bytes:
        decryptor = Cipher(algorithms.AES(self._aes_key), modes.CBC(iv)).decryptor()
        return decryptor.update(ciphertext) + decryptor.finalize()

    def _authenticate(self, mac_key: bytes) -> int:
        """First pass: HMAC and per-chunk digests over the ciphertext, then the padding; returns the size."""
        mac = hmac.new(mac_key, digestmod=hashlib.sha256)
        self._raw.seek(HEADER_SIZE)
        chunk = b""
        for index in range(self._count):
            chunk = _read_exactly(self._raw, min(self._chunk, self._body - index * self._chunk))
            mac.update(chunk)
            self._index += hashlib.sha256(chunk).digest() + chunk[-BLOCK_SIZE:]
        tag = _read_exactly(self._raw, MAC_SIZE + 1)
        if not hmac.compare_digest(mac.digest(), tag):
            raise self._mismatch()
        # The HMAC is good, so a padding check here is no padding oracle.
        previous = chunk[-2 * BLOCK_SIZE : -BLOCK_SIZE] if len(chunk) > BLOCK_SIZE else self._chunk_iv(self._count - 1)
        last = self._decrypt(previous, chunk[-BLOCK_SIZE:])
        pad = last[-1]
        if not 1 <= pad <= BLOCK_SIZE or last[-pad:] != bytes([pad]) * pad:
            raise self._mismatch()
        self._pad = pad
        return self._body - pad

    @property
    def chunk_count(self) -> int:
        return self._count

    def _load(self, index: int) -> bytes:
        if index != self._loaded:
            self._loaded, self._data = -1, b""
            start = index * self._chunk
            self._raw.seek(HEADER_SIZE + start)
            ciphertext = _read_exactly(self._raw, min(self._chunk, self._body - start))
            digest = bytes(self._index[index * _INDEX_ENTRY : index * _INDEX_ENTRY + 32])
            if not hmac.compare_digest(hashlib.sha256(ciphertext).digest(), digest):
                raise self._changed(index)
            data = self._decrypt(self._chunk_iv(index), ciphertext)
            if index == self._count - 1:
                data = data[: len(data) - self._pad]
            self._loaded, self._data = index, data
        return self._data

    def _chunk_at(self, limit: int) -> bytes:
        """Up to ``limit`` bytes at the current position from one chunk; b"" at end of file."""
        if self._pos >= self.size:
            return b""
        index = self._pos // self._chunk
        data = self._load(index)
        offset = self._pos - index * self._chunk
        piece = data[offset : offset + limit] if offset or limit < len(data) else data
        self._pos += len(piece)
        return piece

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed BigdlCbcReader")
        remaining = self.size - self._pos if size is None or size < 0 else size
        chunks = []
        while remaining > 0:
            piece = self._chunk_at(remaining)
            if not piece:
                break
            chunks.append(piece)
            remaining -= len(piece)
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def read1(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed BigdlCbcReader")
        return self._chunk_at(self.size if size is None or size < 0 else size)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readinto1(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read1(len(view))
        view[: len(data)] = data
        return len(data)

    def peek(self, size: int = 0) -> bytes:
        if self.closed:
            raise ValueError("peek on a closed BigdlCbcReader")
        if self._pos >= self.size:
            return b""
        index = self._pos // self._chunk
        return self._load(index)[self._pos - index * self._chunk :]

    def close(self) -> None:
        self._data = b""
        self._loaded = -1
        super().close()
