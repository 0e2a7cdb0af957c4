"""Encrypting, decrypting, inspecting and verifying files and whole trees.

Trees are processed in parallel, report progress in bytes through a callback, and are written atomically
(see :func:`~ppml.io.storage.staged_output`). Each file's header names its own wrapped key, so a tree
whose files were written under different data keys (or before a rotation) decrypts file by file.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import (
    DEFAULT_FORMAT,
    FileFormat,
    FileInfo,
    available_formats,
    detect_file_format,
    get_format,
)
from ppml.errors import CorruptHeaderError, IntegrityError, PpmlError, UnprotectedDataWarning, UsageError
from ppml.io import azure as _azure
from ppml.crypto.manifest import Member
from ppml.io.batch import Progress, Report, copy_stream, run_tasks
from ppml.io.datasets import (
    UNPROTECTED_WARNING,
    check_listing,
    dataset_roots,
    check_member,
    dataset_facts,
    latest_version,
    member,
    write_version,
)
from ppml.io.storage import Location, locate, staged_output
from ppml.keys.keyring import KeyRing

__all__ = [
    "encrypt",
    "decrypt",
    "describe",
    "verify",
    "open_decrypted",
    "open_encrypted",
    "copy",
    "encrypt_stream",
    "decrypt_stream",
]

def _at(base: Location, relative: str) -> Location:
    return base.child(relative) if relative else base


def _sniff(location: Location) -> FileFormat:
    with location.open("rb", header_only=True) as raw:
        fmt = detect_file_format(raw, location.path)
    if not fmt.encrypted:
        # A damaged header must not make an encrypted file pass as plaintext (copied out by decrypt,
        # reported ok by verify): a name with an encrypted format's suffix needs that format's header.
        for name in available_formats():
            claimed = get_format(name)
            if claimed.encrypted and claimed.suffix and location.path.endswith(claimed.suffix):
                raise CorruptHeaderError(
                    f"{location.url}: named like an {claimed.name} file but has no {claimed.name} header",
                    path=location.url,
                    hint="if it was encrypted by ppml, it has been damaged; if it is plaintext, rename it "
                         "or pass --mode plain_text",
                )
    return fmt


def describe(location: Location, fmt: FileFormat | None = None) -> FileInfo:
    """Header facts and wrapped keys of one file, read without any key."""
    fmt = fmt or _sniff(location)
    with location.open("rb", header_only=True) as raw:
        info = fmt.describe(raw, name=location.url)
    return FileInfo(info.format, info.envelope, {**info.facts, "size": location.size()})


def _key_for(fmt: FileFormat, info: FileInfo, keyring: KeyRing | None, key: DataKey | None, name: str):
    if not fmt.encrypted:
        return None
    if key is not None:
        return key
    if keyring is None:
        raise UsageError(f"{name} is encrypted; a data key or key management service is needed")
    return keyring.unwrap(info.envelope, name=name)


@contextlib.contextmanager
def open_decrypted(url: str | Location, *, keyring: KeyRing | None = None, key: DataKey | None = None,
                   mode: str | None = None, expect: Member | None = None) -> Iterator[BinaryIO]:
    """Open an encrypted file for reading its plaintext, as an ordinary (seekable) binary file.

    The format is detected from the header (or BigDL's ``.cbc`` suffix) unless ``mode`` names it; the
    data key is unwrapped from the header through ``keyring`` unless ``key`` is given. ``expect`` is the
    data-set manifest's entry for the file, which it must match. Usable directly by pandas, pyarrow and
    DuckDB::

        with open_decrypted("orders.csv.ppml", keyring=KeyRing()) as f:
            df = pandas.read_csv(f)
    """
    location = url if isinstance(url, Location) else locate(url)
    fmt = get_format(mode) if mode else _sniff(location)
    with location.open("rb") as raw:
        info = fmt.describe(raw, name=location.url)
        if expect is not None:
            check_member(expect, fmt, info, name=location.url)
        data_key = _key_for(fmt, info, keyring, key, location.url)
        with fmt.open_reader(raw, data_key, name=location.url) as reader:
            yield reader


@contextlib.contextmanager
def open_encrypted(url: str | Location, *, key: DataKey | None, envelope: Sequence[WrappedKey],
                   mode: str = DEFAULT_FORMAT, force: bool = False, **options: object) -> Iterator[BinaryIO]:
    """Open a file for writing plaintext that lands encrypted, atomically (complete on success only)."""
    location = url if isinstance(url, Location) else locate(url)
    fmt = get_format(mode)
    with staged_output(location, force=force) as staging, staging.open("wb") as raw:
        with fmt.open_writer(raw, key, envelope, name=location.url, **options) as writer:
            yield writer


def encrypt(src: str, dst: str, *, key: DataKey, envelope: Sequence[WrappedKey], mode: str = DEFAULT_FORMAT,
            force: bool = False, workers: int | None = None, progress: Progress | None = None,
            **options: object) -> Report:
    """Encrypt a file, or every file of a tree, from ``src`` into ``dst``.

    In a tree each output file gets the format's suffix (``.ppml``, ``.cbc``); files whose names start
    with ``.`` or ``_`` are skipped. The format's folder sidecars (BigDL's ``.meta``) are written too.
    """
    fmt = get_format(mode)
    if not fmt.encrypted:
        raise UsageError(f"{fmt.name!r} does not encrypt", hint="choose an encrypted --mode")
    source, target = locate(src), locate(dst)
    _refuse_same(source, target)
    started = time.perf_counter()
    entries = source.files()
    report = Report("encrypt", fmt.name)
    with staged_output(target, force=force) as staging:
        def task(relative: str, size: int) -> Callable[[], dict[str, object]]:
            def run() -> dict[str, object]:
                out_rel = relative + fmt.suffix if relative else ""
                out = _at(staging, out_rel)
                with _at(source, relative).open("rb") as reader, out.open("wb") as raw, \
                        fmt.open_writer(raw, key, envelope, name=out.url, **options) as writer:
                    written = copy_stream(reader, writer, progress)
                members[out_rel] = member(out_rel, fmt, describe(out, fmt), out.size())
                return {"source": _at(source, relative).url, "target": _at(target, out_rel).url, "bytes": written}
            return run

        members: dict[str, Member] = {}
        report.details = run_tasks([task(rel, size) for rel, size in entries], workers)
        if source.is_dir():
            for name, data in fmt.sidecars(envelope).items():
                with staging.child(name).open("wb") as handle:
                    handle.write(data)
            written = write_version(staging, members.values(), key=key, envelope=tuple(envelope),
                                    writer="ppml encrypt", previous=None)
            report.dataset = dataset_facts(written)
    return report.finish(started)


_STAGING_MARKERS = (".ppml-partial-", ".ppml-old-")


def copy(src: str, dst: str, *, force: bool = False, workers: int | None = None,
         progress: Progress | None = None) -> Report:
    """Copy a file or a tree byte for byte (hidden files included), atomically like every output.

    Between two locations of one Azure storage account the copy is server-side (no bytes pass through
    this machine); otherwise files are streamed, in parallel. Leftovers of interrupted ppml outputs
    (``.NAME.ppml-partial-*``) are not copied.
    """
    source, target = locate(src), locate(dst)
    _refuse_same(source, target)
    started = time.perf_counter()
    entries = [(rel, size) for rel, size in source.files(include_hidden=True)
               if not any(marker in part for part in rel.split("/") for marker in _STAGING_MARKERS)]
    report = Report("copy", "bytes")
    server_side = source.is_azure and target.is_azure and _same_store(source, target)
    with staged_output(target, force=force) as staging:
        if server_side:
            pairs = [(_at(source, rel).path, _at(staging, rel).path) for rel, _ in entries]
            with target.errors():
                _azure.copy_blobs(target.fs, pairs, workers=workers or 16)
            if progress:
                progress(sum(size for _, size in entries))
            report.details = [{"source": _at(source, rel).url, "target": _at(target, rel).url, "bytes": size}
                              for rel, size in entries]
        else:
            def task(relative: str) -> Callable[[], dict[str, object]]:
                def run() -> dict[str, object]:
                    with _at(source, relative).open("rb") as reader, _at(staging, relative).open("wb") as writer:
                        written = copy_stream(reader, writer, progress)
                    return {"source": _at(source, relative).url, "target": _at(target, relative).url,
                            "bytes": written}
                return run

            report.details = run_tasks([task(rel) for rel, _ in entries], workers)
    return report.finish(started)


def _strip(relative: str, fmt: FileFormat) -> str:
    return relative[: -len(fmt.suffix)] if fmt.suffix and relative.endswith(fmt.suffix) else relative


def encrypt_stream(reader: BinaryIO, dst: str, *, key: DataKey, envelope: Sequence[WrappedKey],
                   mode: str = DEFAULT_FORMAT, force: bool = False, progress: Progress | None = None,
                   **options: object) -> Report:
    """Encrypt everything ``reader`` yields (standard input, a pipe) into the file ``dst``, atomically."""
    fmt = get_format(mode)
    if not fmt.encrypted:
        raise UsageError(f"{fmt.name!r} does not encrypt", hint="choose an encrypted --mode")
    started, target = time.perf_counter(), locate(dst)
    with open_encrypted(target, key=key, envelope=envelope, mode=fmt.name, force=force, **options) as writer:
        written = copy_stream(reader, writer, progress)
    report = Report("encrypt", fmt.name)
    report.details = [{"source": "-", "target": target.url, "bytes": written}]
    return report.finish(started)


def decrypt_stream(src: str, writer: BinaryIO, *, keyring: KeyRing | None = None, key: DataKey | None = None,
                   mode: str | None = None, progress: Progress | None = None) -> Report:
    """Decrypt the file ``src`` into ``writer`` (standard output, a pipe) as it is read.

    Segmented formats authenticate each segment before its bytes are written, whole-file formats (BigDL's)
    the whole file before any byte is; but a stream cannot be taken back: if ``src`` turns out truncated or
    altered further on, the bytes already written stay written and IntegrityError is raised, so consumers must
    check the outcome.
    """
    started, location = time.perf_counter(), locate(src)
    if location.is_dir():
        raise UsageError(f"{location.url} is a folder; a stream takes one file", hint="decrypt folders to a folder")
    with open_decrypted(location, keyring=keyring, key=key, mode=mode) as reader:
        written = copy_stream(reader, writer, progress)
    writer.flush()
    report = Report("decrypt", mode or "auto")
    report.details = [{"source": location.url, "target": "-", "bytes": written}]
    return report.finish(started)


def checked_members(source: Location, entries: Sequence[tuple[str, int]], *, keyring: KeyRing | None,
                    key: DataKey | None, mode: str | None, min_version: int | None = None,
                    versions: dict[str, int] | None = None) -> dict[str, Member] | None:
    """Check a folder's data sets against their manifests; returns the members by path relative to ``source``
    (``None`` for a single file). ``versions``, when given, receives the version checked of each data set, by
    its URL (what a provenance record names).

    Every data set in the folder (``source`` itself, or folders below it, such as one result per query) is
    checked. Encrypted files that belong to none are read with a warning, and plaintext files beside them
    are refused unless ``mode`` names the plaintext format: a plaintext file among encrypted ones is how
    injected rows look. (Plaintext files beside data sets, such as a timing report, are read as they are.)
    ``min_version`` applies to the data set at ``source``.
    """
    if not source.is_dir():
        return None
    roots = sorted(dataset_roots(source), key=lambda r: -r.count("/"))  # nested data sets claim their files first
    if min_version is not None and "" not in roots:
        latest_version(source, keyring, key=key, min_version=min_version)  # raises: no manifest
    members: dict[str, Member] = {}
    unclaimed = dict(entries)
    for relative in roots:
        prefix = f"{relative}/" if relative else ""
        root = _at(source, relative)
        version = latest_version(root, keyring, key=key, min_version=min_version if not relative else None)
        assert version is not None
        claimed = {rel: size for rel, size in unclaimed.items() if rel.startswith(prefix)}
        check_listing(root, version, {rel[len(prefix):]: size for rel, size in claimed.items()})
        members.update({prefix + path: m for path, m in version.members().items()})
        if versions is not None:
            versions[root.url] = version.manifest.version
        unclaimed = {rel: size for rel, size in unclaimed.items() if rel not in claimed}
    formats = {relative: get_format(mode) if mode else _sniff(_at(source, relative)) for relative in unclaimed}
    plaintext = sorted(r for r, fmt in formats.items() if not fmt.encrypted)
    if len(plaintext) < len(formats):  # encrypted files that no manifest vouches for
        warnings.warn(UNPROTECTED_WARNING.format(url=source.url), UnprotectedDataWarning, stacklevel=3)
        if plaintext and mode is None:
            raise IntegrityError(f"{source.url}: plaintext file(s) among encrypted ones: "
                                 f"{', '.join(plaintext[:10])}", path=source.url,
                                 hint="if they belong there, read them with --mode plain_text (crypto_mode=...) "
                                      "on their own")
    return members


def decrypt(src: str, dst: str, *, keyring: KeyRing | None = None, key: DataKey | None = None,
            mode: str | None = None, force: bool = False, workers: int | None = None,
            progress: Progress | None = None, min_version: int | None = None) -> Report:
    """Decrypt a file or tree into plaintext; each file's format is detected unless ``mode`` is given.

    A tree is first checked against its data-set manifest (see :func:`checked_members`); ``min_version``
    refuses an older data-set version.
    """
    source, target = locate(src), locate(dst)
    _refuse_same(source, target)
    started = time.perf_counter()
    entries = source.files()
    members = checked_members(source, entries, keyring=keyring, key=key, mode=mode, min_version=min_version)
    report = Report("decrypt", mode or "auto")
    with staged_output(target, force=force) as staging:
        def task(relative: str) -> Callable[[], dict[str, object]]:
            def run() -> dict[str, object]:
                location = _at(source, relative)
                fmt = get_format(mode) if mode else _sniff(location)
                out_rel = _strip(relative, fmt)
                out = _at(staging, out_rel)
                expect = members.get(relative) if members is not None else None
                if (written := fmt.decrypt_file(location, out, keyring=keyring, expect=expect)) is None:
                    with open_decrypted(location, keyring=keyring, key=key, mode=fmt.name, expect=expect) as reader, \
                            out.open("wb") as writer:
                        written = copy_stream(reader, writer, progress)
                return {"source": location.url, "target": _at(target, out_rel).url,
                        "format": fmt.name, "bytes": written}
            return run

        report.details = run_tasks([task(rel) for rel, _ in entries], workers)
    return report.finish(started)


def verify(path: str, *, keyring: KeyRing | None = None, key: DataKey | None = None, mode: str | None = None,
           workers: int | None = None, progress: Progress | None = None, min_version: int | None = None) -> Report:
    """Authenticate a data set's manifest and every segment of every file (or of one file).

    Each file's result (``ok`` or the error) is in :attr:`Report.details`, and the data set's (its manifest
    against the folder) comes first; nothing raises for a bad file, so one damaged file does not hide the
    state of the others.
    """
    source = locate(path)
    started = time.perf_counter()
    report = Report("verify", mode or "auto")
    entries = source.files()
    members: dict[str, Member] | None = None
    dataset_entry: list[dict[str, object]] = []
    try:
        members = checked_members(source, entries, keyring=keyring, key=key, mode=mode, min_version=min_version)
    except PpmlError as exc:
        dataset_entry = [{"path": source.url, "kind": "data set", "ok": False, "bytes": 0, "error": exc.to_dict()}]

    def task(relative: str, size: int) -> Callable[[], dict[str, object]]:
        def run() -> dict[str, object]:
            location = _at(source, relative)
            try:
                fmt = get_format(mode) if mode else _sniff(location)
                with location.open("rb") as raw:
                    info = fmt.describe(raw, name=location.url)
                    if members is not None and relative in members:
                        check_member(members[relative], fmt, info, name=location.url)
                    if (plaintext := fmt.verify_file(location, keyring=keyring)) is None:
                        data_key = _key_for(fmt, info, keyring, key, location.url)
                        plaintext = fmt.verify(raw, data_key, name=location.url)
                result = {"path": location.url, "format": fmt.name, "ok": True, "bytes": plaintext}
            except PpmlError as exc:
                result = {"path": location.url, "ok": False, "bytes": 0, "error": exc.to_dict()}
            if progress:
                progress(size)
            return result
        return run

    report.details = dataset_entry + run_tasks([task(rel, size) for rel, size in entries], workers)
    if members:
        found = latest_version(source, keyring, key=key) if source.is_dir() else None
        report.dataset = dataset_facts(found) if found is not None else None
    return report.finish(started)


def _same_store(a: Location, b: Location) -> bool:
    if a.fs is b.fs:
        return True
    # abfs:// and abfss:// URLs of one account open distinct (equivalent) file system objects.
    return a.is_azure and b.is_azure and a.auth.account is not None and a.auth.account == b.auth.account


def _refuse_same(source: Location, target: Location) -> None:
    if not _same_store(source, target):
        return
    sep = os.sep if source.is_local else "/"
    src, dst = source.path.rstrip("/"), target.path.rstrip("/")
    same = src == dst
    inside = dst.startswith(src + sep)
    # An output that contains the input would delete the input when --force replaces it.
    contains = src.startswith(dst + sep)
    if same or inside or contains:
        raise UsageError(f"the output {target.url} must not be the input, inside it, or contain it",
                         hint="choose an output outside the input")
