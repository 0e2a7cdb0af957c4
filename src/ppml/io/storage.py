"""Paths and URLs through fsspec: local files, and any fsspec protocol (``abfs://``, ``az://``, ...).

This is the one place where paths become file systems. Azure URLs (``abfs://container/path``,
``abfss://container@account.dfs.core.windows.net/path``, ``az://container/path``) get their credentials
from :mod:`ppml.io.azure` automatically, and Azure SDK errors become ppml errors that name the URL and
the setting to change.

Outputs are written under temporary names and moved into place only when complete, so a failed run
never leaves a half-written file or tree that looks finished. Locally the move is a rename. Object
stores have no rename: there the staged files are copied over the target (each blob is replaced
atomically, a tree is not) and the staged copies deleted; see :func:`staged_output`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ppml.errors import AlreadyExistsError, ConfigError, NotFoundError, UsageError
from ppml.io import azure as _azure
from ppml.io.azure import AZURE_PROTOCOLS, AzureAuth, AzureStorageSettings

__all__ = ["Location", "locate", "staged_output", "move_files", "staging_folder", "remove_staging", "TEMPORARY"]

_PROTOCOL_EXTRAS = {"abfs": "azure", "abfss": "azure", "az": "azure"}
HIDDEN_PREFIXES = (".", "_")
#: Where writers stage files not yet published, under the output folder (hidden from readers).
TEMPORARY = "_temporary"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """A file system and a path on it, with the URL the user wrote (kept in its form for children)."""

    fs: fsspec.AbstractFileSystem
    path: str
    url: str
    auth: AzureAuth | None = field(default=None, repr=False, compare=False)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def is_azure(self) -> bool:
        return self.auth is not None

    @property
    def container(self) -> str | None:
        """The Azure container (``None`` for other file systems)."""
        return _azure.split_container(self.path)[0] if self.is_azure else None

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn Azure SDK / adlfs exceptions raised inside into ppml errors naming this location."""
        if not self.is_azure:
            yield
            return
        try:
            yield
        except Exception as exc:
            translated = _azure.translate_error(exc, self.url, self.path, self.auth)
            if translated is None:
                raise
            raise translated from None

    def at(self, path: str) -> Location:
        """Another path on the same file system, its URL written in this location's form."""
        if self.is_local:
            return Location(self.fs, path, path)
        parts = urlsplit(self.url)
        if self.is_azure and "://" in self.url:
            container, rest = _azure.split_container(path)
            host = f"{container}@{parts.netloc.split('@', 1)[1]}" if "@" in parts.netloc else container
            url = f"{parts.scheme}://{host}/{rest}" if rest else f"{parts.scheme}://{host}"
        else:
            url = self.fs.unstrip_protocol(path)
        return Location(self.fs, path, url, self.auth)

    def child(self, relative: str) -> Location:
        return self.at(posixpath.join(self.path, relative))

    def sibling(self, name: str) -> Location:
        return self.at(posixpath.join(posixpath.dirname(self.path.rstrip("/")), name))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def exists(self) -> bool:
        with self.errors():
            return bool(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        with self.errors():
            return bool(self.fs.isdir(self.path))

    def size(self) -> int:
        with self.errors():
            return int(self.fs.size(self.path))

    def not_found(self) -> NotFoundError:
        """The error for this location not existing (on Azure, says so when the container is missing)."""
        if self.is_azure:
            with self.errors():
                exists = _azure.container_exists(self.fs, self.container)
            if exists is False:
                return _azure.container_not_found(self.url, self.container, self.auth.account or "?")
        return NotFoundError(f"{self.url} does not exist")

    def require_container(self) -> None:
        """On Azure, fail clearly when the container does not exist (writing there would fail late)."""
        if not self.is_azure:
            return
        if _is_container_root(self):
            raise UsageError(f"{self.url} is a whole container; the output must be a path inside it",
                             hint=f"e.g. {self.url.rstrip('/')}/output")
        with self.errors():
            exists = _azure.container_exists(self.fs, self.container)
        if exists is False:
            raise _azure.container_not_found(self.url, self.container, self.auth.account or "?")

    def open(self, mode: str = "rb", *, header_only: bool = False) -> BinaryIO:
        """Open for reading or writing.

        On object stores reads are buffered ahead in blocks of :data:`ppml.io.azure.BLOCK_SIZE` (8 MiB:
        few, large requests for sequential reads) or, with ``header_only``, of 64 KiB (for reading a
        header, so planning many files does not download their bodies). Handles are seekable; seeking
        drops the read-ahead buffer only when it moves outside it.
        """
        if not self.is_azure:
            if "r" in mode and not self.exists():
                raise self.not_found()
            if "w" in mode and self.is_local:
                for attempt in range(3):  # a writer finishing beside this one may remove an empty parent
                    try:
                        self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
                        return self.fs.open(self.path, mode)
                    except FileNotFoundError:
                        if attempt == 2:
                            raise
            return self.fs.open(self.path, mode)
        options: dict[str, object] = {}
        if "r" in mode:
            options = {"cache_type": "readahead",
                       "block_size": _azure.HEADER_BLOCK_SIZE if header_only else _azure.BLOCK_SIZE}
        try:
            with self.errors():
                return _GuardedFile(self.fs.open(self.path, mode, **options), self)  # type: ignore[return-value]
        except (FileNotFoundError, NotFoundError):
            raise self.not_found() from None

    def files(self, *, include_hidden: bool = False) -> list[tuple[str, int]]:
        """``(relative path, size)`` of every file below this folder (or of this file), sorted.

        Names starting with ``.`` or ``_`` (``.meta``, ``_SUCCESS``, Spark's temporary folders) are
        skipped unless ``include_hidden``.
        """
        entries = self.listing(include_hidden=include_hidden)
        return [(relative, int(info.get("size") or 0)) for relative, info in entries]

    def listing(self, *, include_hidden: bool = False) -> list[tuple[str, dict]]:
        """As :meth:`files`, with the file system's facts about each file (fsspec's ``info``).

        The facts tell versions of a file apart: ``size`` always, plus ``mtime`` and ``ino`` locally,
        ``etag`` and ``last_modified`` on Azure.
        """
        if not self.exists():
            raise self.not_found()
        if not self.is_dir():
            with self.errors():
                return [("", self.fs.info(self.path))]
        root = self.path.rstrip("/")
        found = []
        with self.errors():
            listing = self.fs.find(root, detail=True)
        for path, info in listing.items():
            if info.get("type") == "directory":
                continue
            relative = posixpath.relpath(path, root)
            if include_hidden or not any(part.startswith(HIDDEN_PREFIXES) for part in relative.split("/")):
                found.append((relative, info))
        return sorted(found, key=lambda entry: entry[0])

    def create(self, data: bytes) -> None:
        """Write a new file holding ``data``, whole or not at all; an existing file is never replaced.

        Raises :class:`~ppml.errors.AlreadyExistsError` when the file exists (another writer got there first).
        """
        if self.is_local:
            folder = os.path.dirname(self.path)
            os.makedirs(folder, exist_ok=True)
            staged = os.path.join(folder, f".{self.name}.ppml-partial-{os.urandom(4).hex()}")
            with open(staged, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(staged, self.path)  # atomic, and fails when the name is taken
            except FileExistsError:
                raise AlreadyExistsError(f"{self.url} already exists") from None
            finally:
                os.unlink(staged)
            return
        try:
            with self.errors():
                if self.is_azure:  # one request that fails when the blob exists (If-None-Match: *)
                    self.fs.pipe_file(self.path, data, overwrite=False)
                elif self.fs.exists(self.path):
                    raise FileExistsError(self.path)
                else:
                    self.fs.pipe_file(self.path, data)
        except FileExistsError:
            raise AlreadyExistsError(f"{self.url} already exists") from None

    def glob(self) -> list[Location]:
        """The locations matching this location's path as a glob pattern, sorted."""
        with self.errors():
            return [self.at(m) for m in sorted(self.fs.glob(self.path))]

    def remove(self, *, recursive: bool = False) -> None:
        with self.errors():
            self.fs.rm(self.path, recursive=recursive)

    def remove_if_empty(self) -> None:
        """Remove this folder if nothing is in it, not even an empty folder: another writer's staging folder
        in it, whose file is not written yet, is left alone (object stores have no empty folders to keep)."""
        if not self.exists() or self.files(include_hidden=True):
            return
        if not self.is_local:
            self.remove(recursive=True)
            return
        try:
            os.rmdir(self.path)
        except OSError:  # another writer's folder appeared in it: that writer removes it when done
            pass


class _GuardedFile:
    """An Azure file object whose exceptions become ppml errors naming the file (all else delegated)."""

    def __init__(self, raw: BinaryIO, location: Location) -> None:
        self._raw = raw
        self._location = location

    def _call(self, name: str, *args):
        with self._location.errors():
            return getattr(self._raw, name)(*args)

    def read(self, size: int | None = -1) -> bytes:
        return self._call("read", -1 if size is None else size)

    def read1(self, size: int = -1) -> bytes:
        return self._call("read", size)

    def readinto(self, buffer) -> int:
        return self._call("readinto", buffer)

    def readline(self, size: int = -1) -> bytes:
        return self._call("readline", size)

    def write(self, data) -> int:
        return self._call("write", data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._call("seek", offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def readable(self) -> bool:
        return self._raw.readable()

    def writable(self) -> bool:
        return self._raw.writable()

    def seekable(self) -> bool:
        return self._raw.seekable()

    def __iter__(self):
        while line := self.readline():
            yield line

    def __enter__(self) -> _GuardedFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getattr__(self, name: str):
        return getattr(self._raw, name)


def locate(url: str | os.PathLike, *, azure: AzureStorageSettings | None = None, **storage_options: object) -> Location:
    """Resolve a local path or an fsspec URL.

    Azure URLs get their storage options from :func:`ppml.io.azure.resolve` (explicit ``azure``
    settings, then the standard ``AZURE_STORAGE_*`` environment variables, then
    ``DefaultAzureCredential``) unless ``storage_options`` are given.
    """
    text = os.fspath(url)
    protocol = text.split("://", 1)[0].lower() if "://" in text else "file"
    auth = None
    if protocol in AZURE_PROTOCOLS:
        if storage_options:
            auth = AzureAuth(storage_options.get("account_name"), "the given storage options")  # type: ignore[arg-type]
        else:
            storage_options, auth = _azure.resolve(text, azure)
    try:
        fs, path = fsspec.core.url_to_fs(text, **storage_options)
    except ImportError as exc:
        extra = _PROTOCOL_EXTRAS.get(protocol)
        raise ConfigError(f"cannot open {text}: support for {protocol}:// is not installed ({exc})",
                          hint=f"pip install 'ppml[{extra}]'" if extra else None) from None
    except ValueError as exc:
        message = auth.scrub(str(exc)) if auth else str(exc)
        raise ConfigError(f"cannot open {text}: {message.splitlines()[0][:200]}") from None
    if isinstance(fs, LocalFileSystem):
        path = os.path.abspath(os.path.expanduser(path))
    if auth is not None and not path.strip("/"):
        raise UsageError(f"{text} names no container", hint="write abfs://CONTAINER/PATH")
    return Location(fs, path, text, auth)


def _is_container_root(location: Location) -> bool:
    return location.is_azure and "/" not in location.path.strip("/")


@contextlib.contextmanager
def staged_output(target: Location, *, force: bool) -> Iterator[Location]:
    """Yield a temporary sibling of ``target`` to write into; move it into place on success.

    An existing ``target`` raises :class:`~ppml.errors.AlreadyExistsError` unless ``force``. On error
    the temporary output is deleted and ``target`` is left as it was.

    Locally the staged output is renamed into place (atomic for a file; for a folder the old one is
    renamed aside first, so readers briefly see no folder). Object stores (Azure Blob, S3, ...) have
    no rename: the staged files are copied over the target server-side and then deleted. Each file is
    replaced atomically, but a reader listing a folder during the copy can see a mix of old and new
    files, and a process killed during the copy leaves that mix (and the ``.NAME.ppml-partial-*``
    folder beside it). An empty folder cannot exist on Blob storage and is not created there.
    """
    target.require_container()
    if target.exists() and not force:
        raise AlreadyExistsError(f"{target.url} already exists", hint="pass --force to replace it")
    token = os.urandom(4).hex()
    staging = target.sibling(f".{target.name}.ppml-partial-{token}")
    try:
        yield staging
        if not staging.exists():  # an empty tree: still produce an (empty) folder where folders exist
            if staging.is_local:
                staging.fs.makedirs(staging.path, exist_ok=True)
            else:  # no empty folders on object stores: the replaced output simply goes
                if target.exists():
                    target.remove(recursive=True)
                return
        if staging.is_local:
            _replace_local(staging, target, token)
        else:
            _replace_remote(staging, target)
    except BaseException:
        _discard(staging)
        raise


def _discard(staging: Location) -> None:
    try:
        if staging.exists():
            staging.remove(recursive=True)
    except Exception as exc:  # the original error matters more; say what is left behind
        _log.warning("could not delete the partial output %s: %s", staging.url, exc)


def _replace_local(staging: Location, target: Location, token: str) -> None:
    old = None
    if target.exists():
        old = target.sibling(f".{target.name}.ppml-old-{token}")
        os.replace(target.path, old.path)
    os.replace(staging.path, target.path)
    if old is not None:
        old.fs.rm(old.path, recursive=True)


def _replace_remote(staging: Location, target: Location) -> None:
    entries = [relative for relative, _ in staging.files(include_hidden=True)]
    single = entries == [""]
    old: set[str] = set()
    if target.exists():
        old = {target.child(r).path if r else target.path for r, _ in target.files(include_hidden=True)}
        if single != (not target.is_dir()):  # a file replaced by a folder or the other way round
            target.remove(recursive=True)
            old = set()
    pairs = [(staging.path, target.path)] if single else \
        [(staging.child(r).path, target.child(r).path) for r in entries]
    _copy_all(target, pairs)
    stale = old - {dst for _, dst in pairs}
    with target.errors():
        if stale:
            target.fs.rm(sorted(stale))
        staging.fs.rm(staging.path, recursive=True)


def _copy_all(target: Location, pairs: Sequence[tuple[str, str]]) -> None:
    with target.errors():
        if target.is_azure:
            _azure.copy_blobs(target.fs, pairs)
        else:
            for src, dst in pairs:
                target.fs.copy(src, dst)


def move_files(root: Location, pairs: Sequence[tuple[str, str]]) -> None:
    """Move files ``src → dst`` (paths on ``root``'s file system): renames locally, copy+delete elsewhere."""
    if root.is_local:
        for src, dst in pairs:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)
        return
    _copy_all(root, pairs)
    if pairs:
        with root.errors():
            root.fs.rm([src for src, _ in pairs])


def staging_folder(root: Location, job: str | None = None) -> Location:
    """A folder under ``root/_temporary/`` (hidden from readers) for files not yet published."""
    return root.child(f"{TEMPORARY}/{job or uuid.uuid4().hex[:16]}")


def remove_staging(folder: Location) -> None:
    """Delete a staging folder, and ``_temporary`` above it once nothing is in it (another writer's staging
    folder, even empty, stays)."""
    if folder.exists():
        folder.remove(recursive=True)
    parent = folder.at(posixpath.dirname(folder.path.rstrip("/")))
    if parent.name == TEMPORARY:
        parent.remove_if_empty()
