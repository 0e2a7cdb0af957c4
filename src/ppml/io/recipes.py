"""The safe recipes that ``import ppml`` offers: open, encrypt, decrypt, verify and inspect by path or URL.

Keys are never handled here: callers name a data-key file (which holds only wrapped copies of its key) and
:class:`~ppml.keys.settings.KeySettings` saying which key management services may unwrap it; each file's
header names the key it needs. Raw data keys, envelopes, key rings and codecs are in :mod:`ppml.hazmat`.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from typing import BinaryIO

from ppml.crypto.formats import FileInfo, get_format
from ppml.errors import UsageError
from ppml.io import files
from ppml.io.batch import Report
from ppml.io.encryption import prepare_encryption
from ppml.io.storage import locate
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.settings import KeySettings

__all__ = ["open", "encrypt", "decrypt", "verify", "inspect", "create_data_key", "EncryptedFile"]

PathLike = str | os.PathLike


class EncryptedFile(io.BufferedIOBase):
    """A file opened by :func:`open`: it reads authenticated plaintext, or writes plaintext that lands encrypted.

    Readers are seekable, and every byte they return has been authenticated; reading to the end proves the
    whole file is intact. Writers stage their output and move it into place when closed, so the file
    appears complete or not at all; leaving a ``with`` block by an exception discards it. ``close()`` also
    closes the underlying storage file.
    """

    def __init__(self, inner: BinaryIO, stack: contextlib.ExitStack, name: str) -> None:
        super().__init__()
        self._inner = inner
        self._stack = stack
        self.name = name

    @property
    def size(self) -> int:
        """The plaintext size of a file opened for reading."""
        return self._inner.size  # type: ignore[attr-defined]

    def readable(self) -> bool:
        return self._inner.readable()

    def writable(self) -> bool:
        return self._inner.writable()

    def seekable(self) -> bool:
        return self._inner.seekable()

    def read(self, size: int | None = -1) -> bytes:
        return self._inner.read(size)

    def read1(self, size: int = -1) -> bytes:
        return self._inner.read1(size)  # type: ignore[attr-defined]

    def readinto(self, buffer) -> int:
        return self._inner.readinto(buffer)  # type: ignore[attr-defined]

    def readline(self, size: int | None = -1) -> bytes:
        return self._inner.readline(size)

    def peek(self, size: int = 0) -> bytes:
        return self._inner.peek(size)  # type: ignore[attr-defined]

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def write(self, data) -> int:
        return self._inner.write(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._stack.close()
            finally:
                super().close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the staged output (and a writer's unfinished file) is discarded
            self._stack.__exit__(exc_type, exc, tb)
        finally:
            super().close()


def open(path: PathLike, mode: str = "rb", *, keys: KeySettings | None = None,  # noqa: A001 - like gzip.open
         data_key: PathLike | None = None, crypto_mode: str | None = None, segment: str | None = None,
         force: bool = False) -> EncryptedFile:
    """Open an encrypted file (local path or URL: ``abfss://``, ``az://`` ...) as an ordinary binary file.

    Parameters
    ----------
    path
        The file.
    mode
        ``"rb"`` to read plaintext (seekable; pandas, pyarrow and DuckDB read it directly) or ``"wb"`` to
        write plaintext that lands encrypted.
    keys
        Which key management services unwrap the key the file's header names (reading), or the data key
        (writing). Default: this process's environment and the default key store.
    data_key
        Writing: the data-key file to encrypt under (required). Reading: a data-key file to use instead of
        the key the header names.
    crypto_mode
        Reading: the format, when the header cannot tell (default: detected). Writing: the format to write
        (default ``aes_gcm_stream``).
    segment
        Writing: the format's segment preset (default: its own).
    force
        Writing: replace an existing file.
    """
    keys = keys or KeySettings()
    stack = contextlib.ExitStack()
    location = locate(os.fspath(path))
    try:
        if mode in ("r", "rb"):
            if segment is not None or force:
                raise UsageError("segment and force are for writing (mode 'wb')")
            ring = keys.keyring()
            key = ring.open_data_key_file(os.fspath(data_key))[1] if data_key is not None else None
            inner = stack.enter_context(files.open_decrypted(location, keyring=ring, key=key, mode=crypto_mode))
        elif mode in ("w", "wb"):
            if data_key is None:
                raise UsageError(f"writing {location.url} needs data_key=FILE",
                                 hint="create one with ppml.create_data_key('dk.json') or 'ppml keys data-key'")
            encryption = prepare_encryption(data_key, keys, mode=crypto_mode, segment=segment)
            inner = stack.enter_context(files.open_encrypted(location, force=force, **encryption.writer_arguments()))
        else:
            raise UsageError(f"mode {mode!r} is not supported", hint="use 'rb' to read or 'wb' to write")
    except BaseException:
        stack.close()
        raise
    return EncryptedFile(inner, stack, location.url)


def encrypt(src: PathLike, dst: PathLike, *, data_key: PathLike, keys: KeySettings | None = None,
            crypto_mode: str | None = None, segment: str | None = None, force: bool = False,
            workers: int | None = None, progress: Callable[[int], None] | None = None) -> Report:
    """Encrypt a file, or every file of a folder, from ``src`` into ``dst`` (atomically, in parallel).

    In a folder each file gets the format's suffix (``.ppml``); names starting with ``.`` or ``_`` are
    skipped. ``progress(n)`` is called with the number of bytes done as they are done.
    """
    encryption = prepare_encryption(data_key, keys, mode=crypto_mode, segment=segment)
    return files.encrypt(os.fspath(src), os.fspath(dst), force=force, workers=workers, progress=progress,
                         **encryption.writer_arguments())


def decrypt(src: PathLike, dst: PathLike, *, keys: KeySettings | None = None, data_key: PathLike | None = None,
            crypto_mode: str | None = None, force: bool = False, workers: int | None = None,
            progress: Callable[[int], None] | None = None, min_version: int | None = None) -> Report:
    """Decrypt a file or folder; each file's header names its key and format. A folder is checked against its
    data-set manifest first (``min_version`` refuses an older version); nothing unauthenticated is written,
    and a failed run leaves no output."""
    ring = (keys or KeySettings()).keyring()
    key = ring.open_data_key_file(os.fspath(data_key))[1] if data_key is not None else None
    return files.decrypt(os.fspath(src), os.fspath(dst), keyring=ring, key=key, mode=crypto_mode, force=force,
                         workers=workers, progress=progress, min_version=min_version)


def verify(path: PathLike, *, keys: KeySettings | None = None, data_key: PathLike | None = None,
           crypto_mode: str | None = None, workers: int | None = None, min_version: int | None = None) -> Report:
    """Authenticate a folder's data-set manifest and every byte of every file (or of one file).

    Returns the report (the data set's entry first, then one per file, ``ok`` or its error) without raising
    for a bad file; ``report.failures`` lists the bad ones and ``report.dataset`` the version checked.
    """
    ring = (keys or KeySettings()).keyring()
    key = ring.open_data_key_file(os.fspath(data_key))[1] if data_key is not None else None
    return files.verify(os.fspath(path), keyring=ring, key=key, mode=crypto_mode, workers=workers,
                        min_version=min_version)


def inspect(path: PathLike, *, crypto_mode: str | None = None) -> FileInfo:
    """What a file's header says (format, wrapping keys, layout), read without any key."""
    return files.describe(locate(os.fspath(path)), get_format(crypto_mode) if crypto_mode else None)


def create_data_key(path: PathLike, *, keys: KeySettings | None = None, key_name: str = "default",
                    force: bool = False) -> str:
    """Create a new data key wrapped by primary key ``key_name`` and save only its wrapped form (mode 0600).

    Returns the key's public id. The key comes from ``keys``' primary KMS, or its BigDL key type.
    """
    key, wrapped = (keys or KeySettings()).data_key_backend().generate_data_key(key_name)
    DataKeyFile.new(key.key_id, (wrapped,)).save(path, replace=force)
    return key.key_id
