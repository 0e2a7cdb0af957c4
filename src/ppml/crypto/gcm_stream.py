"""The ``aes_gcm_stream`` file format: authenticated, streaming, seekable.

Byte layout (all integers big-endian; see ``docs/format.md`` for the full specification)::

    offset  size  field
    0       4     magic  b"PPML"
    4       1     format version (1)
    5       1     algorithm id (1 = AES256_GCM_HKDF, Tink's streaming AEAD)
    6       2     reserved, zero
    8       4     ciphertext segment size
    12      16    file id (random)
    28      32    key commitment = HMAC-SHA256(data key, "ppml/v1/key-commitment" || file id)
    ---- everything above (60 bytes) is the associated data of the body ----
    60      4     envelope area size E (not authenticated)
    64      E     envelope: UTF-8 JSON {"keys": [wrapped key, ...]} padded with spaces
    64+E    ...   body: Tink AES256_GCM_HKDF stream of the plaintext, associated data = bytes 0..60

The envelope is the only unauthenticated part so that rotation can rewrite it in place; the key commitment
binds it: a data key unwrapped from a swapped or edited envelope fails the commitment check before any
segment is read. The random file id makes every file's associated data unique, so a header or body moved
from another file (even one under the same data key) fails authentication.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from ppml.crypto._reader import SealingWriter, SeekablePlaintext
from ppml.crypto._streaming import (
    BODY_HEADER_SIZE,
    TAG_SIZE,
    InvalidTag,
    SegmentCipher,
    SegmentLayout,
    new_body_header,
    parse_body_header,
)
from ppml.crypto.datakey import DATA_KEY_SIZE, DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import CorruptHeaderError, IntegrityError, WrongKeyError

__all__ = [
    "MAGIC",
    "SEGMENT_PRESETS",
    "DEFAULT_SEGMENT_SIZE",
    "StreamHeader",
    "read_header",
    "EncryptingWriter",
    "DecryptingReader",
    "replace_envelope",
    "encode_header",
]

MAGIC = b"PPML"
FORMAT_VERSION = 1
ALGORITHM_AES256_GCM_HKDF = 1
_FIXED = struct.Struct(">4sBBHI16s32s")
AUTHENTICATED_SIZE = _FIXED.size
_ENVELOPE_LEN = struct.Struct(">I")
ENVELOPE_OFFSET = AUTHENTICATED_SIZE + _ENVELOPE_LEN.size
MAX_ENVELOPE_SIZE = 1024 * 1024
ENVELOPE_ROUNDING = 512
_COMMITMENT_LABEL = b"ppml/v1/key-commitment"

SEGMENT_PRESETS = {
    "AES256_GCM_HKDF_4KB": 4096,
    "AES256_GCM_HKDF_64KB": 64 * 1024,
    "AES256_GCM_HKDF_1MB": 1024 * 1024,
}
DEFAULT_SEGMENT_SIZE = SEGMENT_PRESETS["AES256_GCM_HKDF_1MB"]


def _commitment(key: DataKey, file_id: bytes) -> bytes:
    return hmac.new(key.unsafe_material(), _COMMITMENT_LABEL + file_id, hashlib.sha256).digest()


@dataclass(frozen=True)
class StreamHeader:
    """Everything an ``aes_gcm_stream`` header says, readable without any key."""

    segment_size: int
    file_id: bytes
    commitment: bytes
    envelope: tuple[WrappedKey, ...]
    envelope_capacity: int
    authenticated: bytes

    @property
    def body_offset(self) -> int:
        return ENVELOPE_OFFSET + self.envelope_capacity


def _encode_envelope(envelope: Sequence[WrappedKey]) -> bytes:
    return json.dumps({"keys": [w.to_json() for w in envelope]}, separators=(",", ":")).encode()


def encode_header(authenticated: bytes, envelope: Sequence[WrappedKey], capacity: int | None = None) -> bytes:
    """Serialise a header; the envelope area is padded to ``capacity`` (default: room to grow)."""
    payload = _encode_envelope(envelope)
    if capacity is None:
        capacity = -(-(len(payload) * 2 + 1) // ENVELOPE_ROUNDING) * ENVELOPE_ROUNDING
    if len(payload) > capacity or capacity > MAX_ENVELOPE_SIZE:
        raise ValueError(f"envelope of {len(payload)} bytes does not fit an area of {capacity} bytes")
    return authenticated + _ENVELOPE_LEN.pack(capacity) + payload.ljust(capacity, b" ")


def _read_exactly(raw: BinaryIO, size: int) -> bytes:
    chunks = []
    while size:
        chunk = raw.read(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _readinto_exactly(raw: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``raw`` (short only at end of file); returns the number of bytes read."""
    readinto = getattr(raw, "readinto", None)
    if readinto is None:  # a minimal file-like object with read() only
        data = _read_exactly(raw, len(view))
        view[: len(data)] = data
        return len(data)
    got = 0
    while got < len(view):
        n = readinto(view[got:])
        if not n:
            break
        got += n
    return got


def read_header(raw: BinaryIO, *, name: str = "<stream>") -> StreamHeader:
    """Parse the header at the current position of ``raw``; leaves it at the start of the body."""

    def corrupt(what: str) -> CorruptHeaderError:
        return CorruptHeaderError(
            f"{name}: not a valid aes_gcm_stream file ({what})",
            path=name,
            hint="run 'ppml inspect' on it; if it was encrypted by ppml, it has been damaged or truncated",
        )

    fixed = _read_exactly(raw, ENVELOPE_OFFSET)
    if len(fixed) < 4 or fixed[:4] != MAGIC:
        raise corrupt("no PPML magic bytes at the start")
    if len(fixed) < ENVELOPE_OFFSET:
        raise corrupt("header is truncated")
    magic, version, algorithm, reserved, segment_size, file_id, commitment = _FIXED.unpack_from(fixed)
    if version != FORMAT_VERSION:
        raise corrupt(f"format version {version} is not supported; this ppml reads version {FORMAT_VERSION}")
    if algorithm != ALGORITHM_AES256_GCM_HKDF:
        raise corrupt(f"unknown algorithm id {algorithm}")
    if reserved:
        raise corrupt("reserved header bytes are not zero")
    try:
        SegmentLayout(segment_size)
    except ValueError as exc:
        raise corrupt(str(exc)) from None
    (capacity,) = _ENVELOPE_LEN.unpack_from(fixed, AUTHENTICATED_SIZE)
    if capacity > MAX_ENVELOPE_SIZE:
        raise corrupt(f"key envelope size {capacity} exceeds the limit of {MAX_ENVELOPE_SIZE} bytes")
    area = _read_exactly(raw, capacity)
    if len(area) < capacity:
        raise corrupt("key envelope is truncated")
    try:
        entries = json.loads(area.decode("utf-8"))["keys"]
        envelope = tuple(WrappedKey.from_json(e) for e in entries)
    except RecursionError:  # JSON nested deeper than the parser's stack: refused like any other bad envelope
        raise corrupt("key envelope is not readable: nested too deeply") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise corrupt(f"key envelope is not readable: {exc}") from None
    return StreamHeader(segment_size, file_id, commitment, envelope, capacity, fixed[:AUTHENTICATED_SIZE])


def replace_envelope(raw: BinaryIO, header: StreamHeader, envelope: Sequence[WrappedKey]) -> bool:
    """Overwrite the key envelope of the file open in ``raw`` (``r+b``) in place.

    Returns ``False``, changing nothing, when the new envelope does not fit the existing area; the
    caller then rewrites the file with :func:`encode_header` and a copy of the (unchanged) body.
    """
    payload = _encode_envelope(envelope)
    if len(payload) > header.envelope_capacity:
        return False
    raw.seek(ENVELOPE_OFFSET)
    raw.write(payload.ljust(header.envelope_capacity, b" "))
    raw.flush()
    return True


_INITIAL_BUFFER = 64 * 1024


class EncryptingWriter(SealingWriter):
    """A binary file object that encrypts what is written to it into ``raw``.

    Memory use is one segment. ``close()`` writes the final segment and flushes ``raw`` but does not
    close it. Leaving a ``with`` block by an exception does *not* write the final segment, so a
    half-written file can never pass as complete: readers report it as truncated.

    Parameters
    ----------
    raw
        Writable binary file object receiving the ciphertext.
    key
        The 256-bit data key.
    envelope
        Wrapped copies of ``key`` to store in the header (at least one).
    segment_size
        Ciphertext segment size; see :data:`SEGMENT_PRESETS`.
    """

    def __init__(self, raw: BinaryIO, key: DataKey, envelope: Sequence[WrappedKey], *,
                 segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        super().__init__()
        if len(key) != DATA_KEY_SIZE:
            raise ValueError(f"aes_gcm_stream needs a {DATA_KEY_SIZE}-byte data key, not {len(key)} bytes")
        if not envelope:
            raise ValueError("at least one wrapped copy of the data key is required")
        self._layout = SegmentLayout(segment_size)
        file_id = os.urandom(16)
        authenticated = _FIXED.pack(MAGIC, FORMAT_VERSION, ALGORITHM_AES256_GCM_HKDF, 0, segment_size, file_id,
                                    _commitment(key, file_id))
        body_header = new_body_header()
        salt, prefix = parse_body_header(body_header)
        self._cipher = SegmentCipher(key.unsafe_material(), salt, prefix, authenticated)
        self._raw = raw
        self._raw.write(encode_header(authenticated, envelope) + body_header)
        # One plaintext segment, reused (grown up to a segment while the first one fills): growing and
        # clearing a bytearray per segment made the kernel map and unmap a fresh MiB every time (a
        # page-fault storm that halved encrypt speed). The ciphertext is
        # a fresh bytes object per segment, so no sink can ever see it change after write().
        self._plain = bytearray(min(self._layout.plain_capacity(1), _INITIAL_BUFFER))
        self._fill = 0
        self._index = 0
        self._written = 0

    def tell(self) -> int:
        return self._written

    def _emit(self, data, last: bool) -> None:
        self._raw.write(self._cipher.seal(self._index, data, last))
        self._index += 1

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a closed EncryptingWriter")
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            capacity = self._layout.plain_capacity(self._index)
            if self._fill == capacity:
                # More data follows, so the buffered segment is not the last one.
                self._emit(memoryview(self._plain)[: self._fill], last=False)
                self._fill = 0
                continue
            if not self._fill and len(view) > capacity:
                self._emit(view[:capacity], last=False)
                view = view[capacity:]
                continue
            take = min(capacity - self._fill, len(view))
            if self._fill + take > len(self._plain):  # small files never pay for a whole segment
                grown = min(self._layout.plain_capacity(1), max(2 * len(self._plain), self._fill + take))
                self._plain.extend(bytes(grown - len(self._plain)))
            self._plain[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
        self._written += size
        return size

    def _seal(self) -> None:
        self._emit(memoryview(self._plain)[: self._fill], last=True)
        self._raw.flush()

    def _release(self) -> None:
        self._plain = bytearray()


class DecryptingReader(SeekablePlaintext):
    """A seekable, read-only binary file object over an ``aes_gcm_stream`` file.

    Each segment is authenticated before any of its bytes are returned, so every byte ``read`` gives
    back is authentic and in place. Truncation is detected when the (short) last segment is read: a
    caller that must know the *whole* file is intact reads to the end (or calls :meth:`verify`).
    Memory use is three segment-sized buffers (one for ciphertext, two for plaintext; capped by the
    file's size), allocated when first needed and reused for every segment, so reading allocates
    nothing per segment beyond the ``bytes`` that ``read`` returns (``readinto`` nothing at all).
    Seeking costs nothing until the next read, which decrypts only the segments covering the requested
    bytes. ``close()`` does not close ``raw``.

    Parameters
    ----------
    raw
        Seekable binary file object positioned anywhere; the whole object is the encrypted file.
    key
        The data key. A key that is not this file's raises :class:`~ppml.errors.WrongKeyError`
        before any segment is read.
    name
        Name of the file, used in error messages.
    header
        The already-parsed header, to skip parsing it again.
    """

    def __init__(self, raw: BinaryIO, key: DataKey, *, name: str = "<stream>",
                 header: StreamHeader | None = None) -> None:
        super().__init__()
        self._name = name
        self._raw = raw
        if header is None:
            raw.seek(0)
            header = read_header(raw, name=name)
        self.header = header
        if len(key) != DATA_KEY_SIZE or not hmac.compare_digest(_commitment(key, header.file_id),
                                                                header.commitment):
            raise WrongKeyError(
                f"{name}: data key {key.key_id} is not the key this file was encrypted with",
                hint="use the data-key file this file was written with, or let ppml unwrap the key from "
                     "the file header",
            )
        self._layout = SegmentLayout(header.segment_size)
        body_size = raw.seek(0, io.SEEK_END) - header.body_offset
        count = self._layout.segment_count(body_size)
        if count is None:
            raise IntegrityError(f"{name}: the encrypted body is truncated or padded ({body_size} bytes)",
                                 path=name, segment=None)
        self._count = count
        self._body_size = body_size
        self.size = self._layout.plaintext_size(body_size)
        raw.seek(header.body_offset)
        salt_prefix = parse_body_header(_read_exactly(raw, BODY_HEADER_SIZE))
        if salt_prefix is None:
            raise IntegrityError(f"{name}: segment 0 of {count} failed authentication", path=name, segment=0,
                                 hint="the file was modified, truncated, extended or assembled from other "
                                      "files; restore it from a trusted copy")
        self._cipher = SegmentCipher(key.unsafe_material(), *salt_prefix, header.authenticated)
        self._pos = 0
        self._seg_index = -1
        self._seg_data: memoryview | bytes = b""
        # Reused for every segment, allocated on first use. Plaintext alternates between two buffers so
        # that the segment loaded last stays readable while the next one is loaded (see _load).
        self._cipher_buf: memoryview | None = None
        self._plain_bufs: list[memoryview | None] = [None, None]
        self._plain_next = 0

    @property
    def segment_count(self) -> int:
        return self._count

    def _load(self, index: int) -> memoryview | bytes:
        """The authenticated plaintext of segment ``index``, as a view of a reused buffer.

        The view stays valid until the second load of another segment after it: each load decrypts
        into the buffer that does *not* hold the segment loaded last. So a caller that keeps a view
        across loads copies it out before the next-but-one load (see :meth:`read`).
        """
        if index != self._seg_index:
            start = self._layout.ciphertext_start(index)
            end = min((index + 1) * self._layout.segment_size, self._body_size)
            if self._cipher_buf is None:
                self._cipher_buf = memoryview(bytearray(min(self._layout.segment_size, self._body_size)))
            which = self._plain_next
            if self._plain_bufs[which] is None:
                self._plain_bufs[which] = memoryview(bytearray(min(self._layout.plain, self.size)))
            ciphertext = self._cipher_buf[: end - start]
            plaintext = self._plain_bufs[which][: max(end - start - TAG_SIZE, 0)]
            self._raw.seek(self.header.body_offset + start)
            try:
                if _readinto_exactly(self._raw, ciphertext) != end - start:
                    raise InvalidTag
                self._cipher.open_into(index, ciphertext, index == self._count - 1, plaintext)
                self._seg_data = plaintext
                self._plain_next = 1 - which
            except InvalidTag:
                plaintext[:] = bytes(len(plaintext))  # never keep unauthenticated plaintext around
                self._seg_index, self._seg_data = -1, b""
                raise IntegrityError(
                    f"{self._name}: segment {index} of {self._count} failed authentication",
                    path=self._name, segment=index,
                    hint="the file was modified, truncated, extended or assembled from other files; "
                         "restore it from a trusted copy",
                ) from None
            self._seg_index = index
        return self._seg_data

    def _chunk(self, limit: int) -> memoryview | bytes:
        """Up to ``limit`` bytes at the current position from one segment, as a view of the segment
        loaded last (valid as :meth:`_load` says); b"" at end of file."""
        if self._pos >= self.size:
            # End of file is only trusted once the last segment (sealed as last) authenticates.
            self._load(self._count - 1)
            return b""
        index = self._layout.segment_of(self._pos)
        data = self._load(index)
        offset = self._pos - self._layout.plaintext_start(index)
        chunk = data[offset : offset + limit]
        self._pos += len(chunk)
        return chunk

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed DecryptingReader")
        remaining = self.size - self._pos if size is None or size < 0 else size
        chunks: list[memoryview | bytes] = []

        def keep_views() -> None:
            # Before anything that may load a segment: only the view of the segment loaded last survives
            # the next load, so copy out the one before it (earlier ones were copied on earlier rounds).
            if len(chunks) >= 2 and isinstance(chunks[-2], memoryview):
                chunks[-2] = bytes(chunks[-2])

        while remaining > 0:
            keep_views()
            chunk = self._chunk(remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        if self._pos >= self.size and size != 0:
            # A read that reaches the end authenticates the last segment first, even when it holds no
            # plaintext (a lone tag), or a body cut to k * segment_size + 16 bytes would read as complete.
            keep_views()
            self._load(self._count - 1)
        if not chunks:
            return b""
        return bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)

    read1 = read

    def readline(self, size: int | None = -1) -> bytes:
        # io.IOBase.readline sizes each read from peek() without subtracting what it already has, so it
        # can return more than ``size`` bytes when a line crosses a segment; give the excess back.
        line = super().readline(-1 if size is None else size)
        if size is not None and 0 <= size < len(line):
            self._pos -= len(line) - size
            line = line[:size]
        return line

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self.closed:
            raise ValueError("read from a closed DecryptingReader")
        size, filled = len(view), 0
        while filled < size:
            chunk = self._chunk(size - filled)
            if not chunk:
                break
            view[filled : filled + len(chunk)] = chunk  # straight from the segment buffer
            filled += len(chunk)
        if self._pos >= self.size and size != 0:
            self._load(self._count - 1)  # as read(): reaching the end authenticates the last segment
        return filled

    def peek(self, size: int = 0) -> bytes:
        if self._pos >= self.size:
            return b""
        index = self._layout.segment_of(self._pos)
        return bytes(self._load(index)[self._pos - self._layout.plaintext_start(index) :])

    def verify(self) -> int:
        """Authenticate every segment; returns the plaintext size. Leaves the position unchanged."""
        for index in range(self._count):
            self._load(index)
        return self.size
