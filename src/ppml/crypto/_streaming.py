"""Tink's ``AES256_GCM_HKDF`` streaming AEAD, segment by segment (private: use :mod:`ppml.crypto.gcm_stream`).

Wire format of a body (identical to Tink's, so Tink can read ours and we can read Tink's)::

    header  = 0x28 || salt (32 random bytes) || nonce prefix (7 random bytes)      -- 40 bytes
    key     = HKDF-SHA256(ikm = data key, salt = salt, info = associated data, length = 32)
    nonce_i = nonce prefix || uint32_be(i) || (0x01 if i is the last segment else 0x00)
    segment_i = AES-256-GCM(key, nonce_i, plaintext_i)                             -- ciphertext || tag

Every ciphertext segment is ``segment_size`` bytes except the first, which is shorter by the 40-byte
header, and the last, which may be short. Segment ``i >= 1`` therefore starts at body offset
``i * segment_size``, so any segment can be located and authenticated on its own.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TAG_SIZE = 16
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
BODY_HEADER_SIZE = 1 + SALT_SIZE + NONCE_PREFIX_SIZE
DERIVED_KEY_SIZE = 32
MAX_SEGMENTS = 2**32
MIN_SEGMENT_SIZE = BODY_HEADER_SIZE + TAG_SIZE + 1
MAX_SEGMENT_SIZE = 64 * 1024 * 1024
_HAS_DECRYPT_INTO = hasattr(AESGCM, "decrypt_into")

__all__ = ["InvalidTag", "SegmentCipher", "SegmentLayout", "new_body_header", "parse_body_header"]


def new_body_header() -> bytes:
    return bytes([BODY_HEADER_SIZE]) + os.urandom(SALT_SIZE + NONCE_PREFIX_SIZE)


def parse_body_header(header: bytes) -> tuple[bytes, bytes] | None:
    """Return ``(salt, nonce_prefix)``, or ``None`` when ``header`` is not a valid body header."""
    if len(header) != BODY_HEADER_SIZE or header[0] != BODY_HEADER_SIZE:
        return None
    return header[1 : 1 + SALT_SIZE], header[1 + SALT_SIZE :]


class SegmentLayout:
    """Where segments lie in a body and in the plaintext, for one ciphertext segment size."""

    __slots__ = ("segment_size", "first_plain", "plain")

    def __init__(self, segment_size: int) -> None:
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(
                f"segment size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes, not {segment_size}"
            )
        self.segment_size = segment_size
        self.first_plain = segment_size - BODY_HEADER_SIZE - TAG_SIZE
        self.plain = segment_size - TAG_SIZE

    def plain_capacity(self, index: int) -> int:
        return self.first_plain if index == 0 else self.plain

    def ciphertext_start(self, index: int) -> int:
        """Offset of segment ``index`` in the body (the body header counts as part of segment 0)."""
        return BODY_HEADER_SIZE if index == 0 else index * self.segment_size

    def plaintext_start(self, index: int) -> int:
        return 0 if index == 0 else self.first_plain + (index - 1) * self.plain

    def segment_of(self, plain_offset: int) -> int:
        """Index of the segment holding plaintext byte ``plain_offset``."""
        if plain_offset < self.first_plain:
            return 0
        return 1 + (plain_offset - self.first_plain) // self.plain

    def segment_count(self, body_size: int) -> int | None:
        """Number of segments in a body of ``body_size`` bytes, or ``None`` if no valid body has that size."""
        if body_size < BODY_HEADER_SIZE + TAG_SIZE:
            return None
        full, rest = divmod(body_size, self.segment_size)
        count = full + (1 if rest else 0)
        if (rest and count > 1 and rest < TAG_SIZE) or count > MAX_SEGMENTS:
            return None
        return count

    def body_size(self, plaintext_size: int) -> int:
        """Size of the body that encrypts ``plaintext_size`` bytes."""
        if plaintext_size <= self.first_plain:
            return BODY_HEADER_SIZE + plaintext_size + TAG_SIZE
        rest = plaintext_size - self.first_plain
        full, tail = divmod(rest, self.plain)
        segments = 1 + full + (1 if tail else 0)
        return self.segment_size * (segments - 1) + (tail + TAG_SIZE if tail else self.segment_size)

    def plaintext_size(self, body_size: int) -> int:
        """Plaintext size of a body whose size :meth:`segment_count` accepted."""
        count = self.segment_count(body_size)
        assert count is not None
        last_cipher = body_size - self.ciphertext_start(count - 1)
        return self.plaintext_start(count - 1) + last_cipher - TAG_SIZE


class SegmentCipher:
    """Seals and opens the segments of one body."""

    __slots__ = ("_aead", "_prefix")

    def __init__(self, ikm: bytes, salt: bytes, nonce_prefix: bytes, associated_data: bytes) -> None:
        key = HKDF(hashes.SHA256(), DERIVED_KEY_SIZE, salt, associated_data).derive(ikm)
        self._aead = AESGCM(key)
        self._prefix = nonce_prefix

    def _nonce(self, index: int, last: bool) -> bytes:
        if not 0 <= index < MAX_SEGMENTS:
            raise ValueError(f"segment index {index} is out of range")
        return self._prefix + struct.pack(">IB", index, 1 if last else 0)

    def seal(self, index: int, plaintext, last: bool) -> bytes:
        return self._aead.encrypt(self._nonce(index, last), plaintext, None)

    def open(self, index: int, ciphertext, last: bool) -> bytes:
        """Decrypt one segment; raises :class:`InvalidTag` when it does not authenticate."""
        return self._aead.decrypt(self._nonce(index, last), ciphertext, None)

    def open_into(self, index: int, ciphertext, last: bool, out) -> None:
        """Decrypt one segment into ``out`` (exactly ``len(ciphertext) - TAG_SIZE`` writable bytes).

        Raises :class:`InvalidTag` when it does not authenticate; ``out`` may then hold unauthenticated
        plaintext, which the caller must discard. Allocates nothing per segment (cryptography >= 47 has
        ``decrypt_into``; older versions decrypt and copy).
        """
        if len(ciphertext) < TAG_SIZE:
            raise InvalidTag
        if _HAS_DECRYPT_INTO:
            self._aead.decrypt_into(self._nonce(index, last), ciphertext, None, out)
        else:  # pragma: no cover - cryptography < 47
            out[:] = self._aead.decrypt(self._nonce(index, last), ciphertext, None)
