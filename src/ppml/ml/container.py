"""The model container: one ppml-encrypted file holding a manifest and the model in its library's format.

Layout of the plaintext (encrypted as one ``aes_gcm_stream`` file, so every byte is authenticated)::

    ZIP archive, entries stored uncompressed, in this order:
      ppml-model.json        the manifest (JSON, schema "ppml.model/1")
      payload/<name> ...     the model's files in its library's own format

The manifest says what the file is (library, format, model class, library versions), what the model expects
(feature columns and their types, the label), the SHA-256 of every payload file (their digest over the
sorted names is the model's ``digest``, which survives re-encryption), and where the model came from
(``provenance``). Reading authenticates the whole file before the archive is parsed: a tampered or
truncated file fails in the decrypting reader, before any library sees a byte.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

from ppml.crypto.formats import get_format
from ppml.errors import UsageError, WrongModelError
from ppml.io import recipes
from ppml.keys.settings import KeySettings

__all__ = ["MANIFEST", "SCHEMA", "write_container", "read_container", "payload_digest"]

MANIFEST = "ppml-model.json"
SCHEMA = "ppml.model/1"
_PAYLOAD = "payload/"


def payload_digest(hashes: Mapping[str, str]) -> str:
    """The model's digest: SHA-256 over the sorted ``name NUL sha256 LF`` lines of its payload files."""
    lines = "".join(f"{name}\0{digest}\n" for name, digest in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_container(path: str | os.PathLike, manifest: dict[str, Any], files: Mapping[str, bytes], *,
                    data_key: str | os.PathLike, keys: KeySettings | None, force: bool) -> dict[str, Any]:
    """Encrypt ``manifest`` and ``files`` into the model file ``path`` (atomically); returns the manifest
    as written, with its ``files`` hashes, ``digest`` and ``created`` time filled in."""
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    manifest = {"schema": SCHEMA, **manifest, "created": _now(), "files": hashes, "digest": payload_digest(hashes)}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        zipped.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        for name, data in files.items():
            zipped.writestr(_PAYLOAD + name, data)
    with recipes.open(path, "wb", keys=keys, data_key=data_key, force=force) as out:
        out.write(archive.getbuffer())
    return manifest


def read_container(path: str | os.PathLike, *, keys: KeySettings | None,
                   data_key: str | os.PathLike | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and payload files of the model file ``path``, after authenticating all of it.

    Raises
    ------
    UsageError
        The file is not encrypted: models are only loaded from authenticated files.
    IntegrityError
        The file was altered or truncated (raised while reading, before anything is parsed).
    WrongModelError
        The file is authentic but is not a ppml model file.
    """
    name = os.fspath(path)
    info = recipes.inspect(name)
    if not get_format(info.format).encrypted:
        raise UsageError(f"{name} is not encrypted; ppml loads models only from encrypted, authenticated files",
                         hint="save models with ppml.ml.save or 'ppml ml train'")
    with recipes.open(name, "rb", keys=keys, data_key=data_key) as encrypted:
        plaintext = encrypted.read()  # reading to the end authenticates every segment and the file's end
    try:
        with zipfile.ZipFile(io.BytesIO(plaintext)) as zipped:
            entries = zipped.infolist()
            if not entries or entries[0].filename != MANIFEST:
                raise WrongModelError(f"{name} is an encrypted file but not a ppml model file",
                                      hint="'ppml ml inspect' reads model files; 'ppml decrypt' data files")
            manifest = json.loads(zipped.read(MANIFEST))
            files = {entry.filename[len(_PAYLOAD):]: zipped.read(entry) for entry in entries[1:]
                     if entry.filename.startswith(_PAYLOAD)}
    except (zipfile.BadZipFile, ValueError, UnicodeDecodeError):
        raise WrongModelError(f"{name} is an encrypted file but not a ppml model file",
                              hint="'ppml ml inspect' reads model files; 'ppml decrypt' data files") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        raise WrongModelError(f"{name} has model schema {found!r}; this ppml reads {SCHEMA!r}",
                              hint="load it with the ppml release that wrote it")
    hashes = {n: hashlib.sha256(data).hexdigest() for n, data in files.items()}
    if hashes != manifest.get("files"):
        # Unreachable without the data key (the file is authenticated): a writer that did not follow the format.
        raise WrongModelError(f"{name}: the payload does not match its manifest")
    return manifest, files
