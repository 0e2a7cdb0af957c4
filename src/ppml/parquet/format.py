"""Encrypted Parquet (PME) among ppml's formats: recognised, described and identified like the others.

A PME file is not a byte stream with one data key: it holds a key per column and is read as a table
(:mod:`ppml.parquet.tables`). What it shares with ppml's formats is what data sets and key rotation need
without keys: recognising it (an encrypted footer starts and ends the file with ``PARE``; a plaintext
footer looks like ordinary Parquet, so those files are recognised by their tail, see
:func:`ppml.parquet.datasets.is_encrypted_parquet`), its wrapped keys, and its identity in a data-set
manifest: the footer's random ``aad_file_unique``, which the authentication of every page, column chunk
and footer binds to (so it tells one file from every other, and survives re-wrapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO, NoReturn

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import FileFormat, FileInfo
from ppml.errors import IntegrityError, PpmlError, UsageError
from ppml.parquet.footer import ENCRYPTED_MAGIC, PLAIN_MAGIC, Tail, read_tail
from ppml.parquet.keymaterial import KeyMaterial, decode_envelope, parse_key_metadata

__all__ = ["ParquetFormat", "PARQUET_FORMAT", "tail_facts"]

PARQUET_FORMAT = "parquet"


def tail_facts(tail: Tail, *, name: str) -> tuple[tuple[WrappedKey, ...], dict[str, object]]:
    """What the tail tells without keys: the footer key's wrapped copies and the facts ``inspect`` shows."""
    if tail.algorithm is None:
        raise IntegrityError(f"{name} is a plaintext Parquet file, not an encrypted one", path=name,
                             hint="read it as plaintext (crypto mode plain_text), or encrypt it with "
                                  "'ppml parquet encrypt'")
    facts: dict[str, object] = {
        "algorithm": tail.algorithm.name,
        "footer": "encrypted" if tail.encrypted_footer else "plaintext, signed",
        "file_id": tail.file_id,
        "key_material": "unknown",
    }
    envelope: tuple[WrappedKey, ...] = ()
    if tail.footer_key_metadata is not None:
        try:
            found = parse_key_metadata(tail.footer_key_metadata, name=name)
        except PpmlError:
            return envelope, facts
        facts["key_material"] = "internal" if isinstance(found, KeyMaterial) else "external"
        if isinstance(found, KeyMaterial):
            facts["footer_key"] = found.master_key_id
            try:
                envelope = decode_envelope(found.kms_wrapped, name=name)
            except PpmlError:
                facts["wrapped_by_other_client"] = True
    return envelope, facts


class ParquetFormat(FileFormat):
    """Parquet Modular Encryption files, as data-set members and key-rotation targets (not as streams)."""

    name = PARQUET_FORMAT
    aliases = ("pme", "aes_gcm_v1", "aes_gcm_ctr_v1")

    @classmethod
    def sniff(cls, head: bytes, path: str) -> bool:
        return head[:4] == ENCRYPTED_MAGIC

    def describe(self, raw: BinaryIO, *, name: str) -> FileInfo:
        envelope, facts = tail_facts(read_tail(raw, name=name), name=name)
        return FileInfo(self.name, envelope, facts)

    @classmethod
    def sniff_tail(cls, raw: BinaryIO, path: str) -> bool:
        """A plaintext-footer PME file: ordinary Parquet at its start, the algorithm in its footer."""
        raw.seek(0)
        if raw.read(4) != PLAIN_MAGIC:
            return False
        try:
            return read_tail(raw, name=path).algorithm is not None
        except PpmlError:
            return False

    def rewrap_file(self, location, *, keyring, backend, key_name: str, remove: Sequence[str]) -> dict:
        from ppml.parquet.rotation import rewrap_file

        return rewrap_file(location, keyring=keyring, backend=backend, key_name=key_name, remove=remove)

    def rekey_file(self, location, *, keyring) -> dict:
        from ppml.parquet.rotation import rekey_file

        return rekey_file(location, keyring=keyring)

    def verify_file(self, location, *, keyring) -> int:
        from ppml.parquet.tools import verify_file

        return verify_file(location, keyring=keyring)

    def decrypt_file(self, location, out, *, keyring, expect=None) -> int:
        from ppml.parquet.tools import decrypt_file

        return decrypt_file(location, out, keyring=keyring, expect=expect)

    def identity(self, info: FileInfo) -> str:
        return str(info.facts["file_id"])

    def _tables_only(self, name: str) -> NoReturn:
        raise UsageError(f"{name}: encrypted Parquet is read and written as tables, not as a stream of bytes",
                         hint="use ppml.read_parquet / ppml.write_parquet, 'ppml parquet encrypt', 'ppml decrypt', or "
                              "Spark's .parquet(...) through PPMLContext")

    def open_reader(self, raw: BinaryIO, key: DataKey | None, *, name: str) -> BinaryIO:
        self._tables_only(name)

    def open_writer(self, raw: BinaryIO, key: DataKey | None, envelope: Sequence[WrappedKey], *,
                    name: str, **options: object) -> BinaryIO:
        self._tables_only(name)

    def verify(self, raw: BinaryIO, key: DataKey | None, *, name: str) -> int:
        self._tables_only(name)
