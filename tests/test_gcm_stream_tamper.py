"""Tampering with ``aes_gcm_stream`` files at documented offsets.

Every test reads the whole file and asserts the exact error class, that the message names the file
(and the segment, where one is at fault), and that no message, hint or ``to_dict`` ever contains
plaintext or key bytes. Offsets come from ``docs/format.md``: a 60-byte authenticated fixed header, a
4-byte envelope-area size, the envelope area, then the body (40-byte body header, then segments; segment
``i >= 1`` starts at body offset ``i * segment_size``).
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections import Counter

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppml.crypto import gcm_stream
from ppml.crypto._streaming import BODY_HEADER_SIZE, TAG_SIZE, SegmentLayout
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.gcm_stream import DecryptingReader, EncryptingWriter
from ppml.errors import CorruptHeaderError, IntegrityError, PpmlError, WrongKeyError

NAME = "tamper/victim.csv.ppml"
MARKER = b"PLAINTEXT-MARKER-7f3a9c;"
SEGMENT = 64  # first segment holds 8 plaintext bytes, the others 48
KEY_A = DataKey(bytes.fromhex("8f" * 16 + "31" * 16))
KEY_B = DataKey(bytes.fromhex("c4" * 16 + "5e" * 16))
AUTHENTICATED = gcm_stream.AUTHENTICATED_SIZE  # 60
ENVELOPE_OFFSET = gcm_stream.ENVELOPE_OFFSET  # 64
ANY = object()


# --- a toy KMS: AES-GCM wrapping under a fixed primary key -----------------------------------------------

_PRIMARY = AESGCM(bytes(range(100, 132)))


def wrap(key: DataKey, version: str = "1") -> WrappedKey:
    nonce = os.urandom(12)
    return WrappedKey("test", "primary", version, nonce + _PRIMARY.encrypt(nonce, key.unsafe_material(), b"t"))


def unwrap(wrapped: WrappedKey) -> DataKey:
    return DataKey(_PRIMARY.decrypt(wrapped.wrapped[:12], wrapped.wrapped[12:], b"t"))


# --- helpers -------------------------------------------------------------------------------------------


def plaintext_of(size: int) -> bytes:
    return (MARKER * (size // len(MARKER) + 1))[:size]


def encrypt(plaintext: bytes, key: DataKey = KEY_A, segment_size: int = SEGMENT) -> bytes:
    raw = io.BytesIO()
    with EncryptingWriter(raw, key, (wrap(key),), segment_size=segment_size) as writer:
        writer.write(plaintext)
    return raw.getvalue()


class Parsed:
    """A file cut up by the documented layout."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.header = gcm_stream.read_header(io.BytesIO(data))
        self.off = self.header.body_offset
        self.body = data[self.off :]
        self.layout = SegmentLayout(self.header.segment_size)
        self.count = self.layout.segment_count(len(self.body))

    def span(self, index: int) -> tuple[int, int]:
        """Absolute ``[start, end)`` of segment ``index`` (excluding the body header)."""
        start = self.layout.ciphertext_start(index)
        end = min((index + 1) * self.layout.segment_size, len(self.body))
        return self.off + start, self.off + end

    def segment(self, index: int) -> bytes:
        start, end = self.span(index)
        return self.data[start:end]

    def segment_at(self, offset: int) -> int:
        """Index of the segment holding absolute byte ``offset`` of the body (after the body header)."""
        return (offset - self.off) // self.layout.segment_size

    def with_segments(self, segments: list[bytes]) -> bytes:
        return self.data[: self.off + BODY_HEADER_SIZE] + b"".join(segments)

    def segments(self) -> list[bytes]:
        return [self.segment(i) for i in range(self.count)]


def read_whole(data: bytes, key: DataKey = KEY_A, *, name: str = NAME) -> bytes:
    return DecryptingReader(io.BytesIO(data), key, name=name).read()


_SECRETS = [MARKER, MARKER[:12], KEY_A.unsafe_material(), KEY_B.unsafe_material()]


def assert_no_leak(exc: BaseException) -> None:
    texts = [str(exc), repr(exc)]
    if isinstance(exc, PpmlError):
        texts += [str(exc.hint), json.dumps(exc.to_dict())]
    for text in texts:
        for secret in _SECRETS:
            for form in (secret.hex(), secret.decode("latin-1"), base64.b64encode(secret).decode(),
                         repr(secret)[2:-1]):
                assert form not in text, f"{type(exc).__name__} leaks secret material: {text!r}"


def expect(data: bytes, error: type[PpmlError] | tuple[type[PpmlError], ...], *, segment: object = ANY,
           key: DataKey = KEY_A) -> PpmlError:
    """Read the whole file; assert exactly ``error`` (or one of them), naming the file and ``segment``,
    leaking nothing."""
    allowed = error if isinstance(error, tuple) else (error,)
    with pytest.raises(PpmlError) as info:
        read_whole(data, key)
    exc = info.value
    assert type(exc) in allowed, f"expected {allowed}, got {type(exc).__name__}: {exc}"
    assert NAME in str(exc)
    if isinstance(exc, IntegrityError):
        assert exc.path == NAME
    if segment is not ANY:
        assert exc.segment == segment, str(exc)
        if segment is not None:
            assert f"segment {segment} " in str(exc)
    assert_no_leak(exc)
    return exc


@pytest.fixture(scope="module", params=[250, 248], ids=["short-last-segment", "full-last-segment"])
def victim(request) -> Parsed:
    parsed = Parsed(encrypt(plaintext_of(request.param)))
    assert parsed.count == 6 if request.param == 248 else 7
    assert read_whole(parsed.data) == plaintext_of(request.param)
    return parsed


# --- truncation and extension --------------------------------------------------------------------------


def test_truncation_at_every_length(victim: Parsed) -> None:
    for length in range(len(victim.data)):
        cut = victim.data[:length]
        if length < victim.off:
            expect(cut, CorruptHeaderError, segment=None)
            continue
        count = victim.layout.segment_count(length - victim.off)
        # The new last segment is either cut short or was sealed as "not last": it fails.
        expect(cut, IntegrityError, segment=None if count is None else count - 1)


def test_truncation_at_a_segment_boundary(victim: Parsed) -> None:
    for keep in range(1, victim.count):
        cut = victim.data[: victim.span(keep - 1)[1]]
        assert len(cut) - victim.off == keep * SEGMENT
        expect(cut, IntegrityError, segment=keep - 1)


def test_truncation_mid_segment(victim: Parsed) -> None:
    for index in range(victim.count):
        start, end = victim.span(index)
        for cut_at in {start + TAG_SIZE, (start + end) // 2, end - 1}:
            if cut_at > start + TAG_SIZE - 1 and cut_at < end:
                expect(victim.data[:cut_at], IntegrityError, segment=index)


def test_truncated_to_an_empty_looking_first_segment_is_not_an_empty_file(victim: Parsed) -> None:
    # 40-byte body header + 16 bytes look like the body of an empty file; read() must still fail.
    cut = victim.data[: victim.off + BODY_HEADER_SIZE + TAG_SIZE]
    reader = DecryptingReader(io.BytesIO(cut), KEY_A, name=NAME)
    assert reader.size == 0
    with pytest.raises(IntegrityError) as info:
        reader.read()
    assert info.value.segment == 0


@pytest.mark.parametrize("extra", [1, 5, 15, 16, 17, 40, 63])
def test_appended_partial_segment(victim: Parsed, extra: int) -> None:
    data = victim.data + os.urandom(extra)
    count = victim.layout.segment_count(len(data) - victim.off)
    expect(data, IntegrityError, segment=None if count is None else victim.count - 1)


@pytest.mark.parametrize("source", ["copy-of-segment-1", "segment-of-another-file"])
def test_appended_whole_segment(victim: Parsed, source: str) -> None:
    if source == "copy-of-segment-1":
        extra = victim.segment(1)
    else:
        extra = Parsed(encrypt(plaintext_of(300))).segment(2)
    assert len(extra) == SEGMENT
    # The old last segment is now read as "not last" (or runs into the new bytes): it fails.
    expect(victim.data + extra, IntegrityError, segment=victim.count - 1)


# --- reordering, duplication, dropping -----------------------------------------------------------------


@pytest.mark.parametrize("i,j", [(1, 2), (2, 3), (1, 4)])
def test_reordered_segments(victim: Parsed, i: int, j: int) -> None:
    segments = victim.segments()
    segments[i], segments[j] = segments[j], segments[i]
    expect(victim.with_segments(segments), IntegrityError, segment=i)


def test_reordered_last_two_full_segments() -> None:
    parsed = Parsed(encrypt(plaintext_of(248)))  # last segment is full: sizes allow the swap
    segments = parsed.segments()
    segments[-1], segments[-2] = segments[-2], segments[-1]
    expect(parsed.with_segments(segments), IntegrityError, segment=parsed.count - 2)


def test_duplicated_segment_inserted(victim: Parsed) -> None:
    segments = victim.segments()
    segments.insert(3, segments[2])
    expect(victim.with_segments(segments), IntegrityError, segment=3)


def test_duplicated_segment_overwriting_its_neighbour(victim: Parsed) -> None:
    segments = victim.segments()
    segments[3] = segments[2]
    expect(victim.with_segments(segments), IntegrityError, segment=3)


def test_dropped_middle_segment(victim: Parsed) -> None:
    segments = victim.segments()
    del segments[2]
    expect(victim.with_segments(segments), IntegrityError, segment=2)


def test_dropped_last_segment(victim: Parsed) -> None:
    segments = victim.segments()
    del segments[-1]
    expect(victim.with_segments(segments), IntegrityError, segment=victim.count - 2)


# --- splicing files under the same data key ------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> tuple[Parsed, Parsed]:
    """Two files with the same data key, plaintext length and envelope size."""
    a, b = Parsed(encrypt(plaintext_of(250))), Parsed(encrypt(b"Z" * 250))
    assert a.off == b.off and len(a.data) == len(b.data)
    return a, b


def test_header_swapped_from_another_file(pair: tuple[Parsed, Parsed]) -> None:
    a, b = pair
    expect(b.data[: b.off] + a.body, IntegrityError, segment=0)


def test_authenticated_header_swapped_from_another_file(pair: tuple[Parsed, Parsed]) -> None:
    a, b = pair
    expect(b.data[:AUTHENTICATED] + a.data[AUTHENTICATED:], IntegrityError, segment=0)


def test_body_swapped_from_another_file(pair: tuple[Parsed, Parsed]) -> None:
    a, b = pair
    expect(a.data[: a.off] + b.body, IntegrityError, segment=0)


def test_body_header_swapped_from_another_file(pair: tuple[Parsed, Parsed]) -> None:
    a, b = pair
    spliced = a.data[: a.off] + b.body[:BODY_HEADER_SIZE] + a.body[BODY_HEADER_SIZE:]
    expect(spliced, IntegrityError, segment=0)


@pytest.mark.parametrize("index", [0, 2, 6])
def test_one_segment_swapped_from_another_file(pair: tuple[Parsed, Parsed], index: int) -> None:
    a, b = pair
    segments = a.segments()
    segments[index] = b.segment(index)
    expect(a.with_segments(segments), IntegrityError, segment=index)


# --- bit flips -----------------------------------------------------------------------------------------


def flip_outcome(parsed: Parsed, offset: int, mask: int, plaintext: bytes) -> str:
    """Apply ``data[offset] ^= mask``; assert the documented outcome for that region; return its name."""
    data = bytearray(parsed.data)
    data[offset] ^= mask
    data = bytes(data)
    if offset < 8:  # magic, version, algorithm, reserved
        expect(data, CorruptHeaderError, segment=None)
        return "header"
    if offset < 12:  # segment size: out of range, or another layout under other associated data
        size = int.from_bytes(data[8:12], "big")
        try:
            layout = SegmentLayout(size)
        except ValueError:
            expect(data, CorruptHeaderError, segment=None)
            return "header"
        count = layout.segment_count(len(parsed.body))
        expect(data, IntegrityError, segment=None if count is None else 0)
        return "authenticated"
    if offset < AUTHENTICATED:  # file id, key commitment: the key no longer matches the commitment
        expect(data, WrongKeyError)
        return "commitment"
    if offset < ENVELOPE_OFFSET:
        # Envelope-area size (unauthenticated): the envelope no longer parses, or the body is looked for
        # in the wrong place and fails authentication. Either way the file does not read.
        expect(data, (CorruptHeaderError, IntegrityError))
        return "envelope-size"
    if offset < parsed.off:  # the unauthenticated envelope: unparsable, or harmless
        try:
            out = read_whole(data)
        except PpmlError as exc:
            assert type(exc) is CorruptHeaderError, f"{type(exc).__name__}: {exc}"
            assert NAME in str(exc)
            assert_no_leak(exc)
            return "envelope-unparsable"
        assert out == plaintext
        return "envelope-harmless"
    if offset < parsed.off + BODY_HEADER_SIZE:
        expect(data, IntegrityError, segment=0)
        return "body-header"
    expect(data, IntegrityError, segment=parsed.segment_at(offset))
    return "segment"


@pytest.fixture(scope="module")
def small() -> tuple[Parsed, bytes]:
    plaintext = plaintext_of(200)
    return Parsed(encrypt(plaintext)), plaintext


def test_every_single_bit_flip(small: tuple[Parsed, bytes]) -> None:
    parsed, plaintext = small
    seen = Counter()
    for offset in range(len(parsed.data)):
        for bit in range(8):
            seen[flip_outcome(parsed, offset, 1 << bit, plaintext)] += 1
    # Every region was reached, and both envelope outcomes really occur.
    for outcome in ("header", "authenticated", "commitment", "envelope-size", "envelope-unparsable",
                    "envelope-harmless",
                    "body-header", "segment"):
        assert seen[outcome], (outcome, seen)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_byte_corruption(small: tuple[Parsed, bytes], data) -> None:
    parsed, plaintext = small
    offset = data.draw(st.integers(0, len(parsed.data) - 1), label="offset")
    mask = data.draw(st.integers(1, 255), label="xor")
    flip_outcome(parsed, offset, mask, plaintext)


def test_bit_flips_in_an_empty_file() -> None:
    parsed = Parsed(encrypt(b""))
    assert len(parsed.body) == BODY_HEADER_SIZE + TAG_SIZE
    for offset in range(parsed.off, len(parsed.data)):
        flip_outcome(parsed, offset, 0x01, b"")


# --- keys ----------------------------------------------------------------------------------------------


class CountingRaw(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.furthest = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.furthest = max(self.furthest, self.tell())
        return out

    def readinto(self, buffer) -> int:
        n = super().readinto(buffer)
        self.furthest = max(self.furthest, self.tell())
        return n


@pytest.mark.parametrize("key", [KEY_B, DataKey(KEY_A.unsafe_material()[:16]), DataKey(b"x" * 33)],
                         ids=["other-key", "short-key", "long-key"])
def test_wrong_key_fails_before_any_segment_is_read(victim: Parsed, key: DataKey) -> None:
    raw = CountingRaw(victim.data)
    with pytest.raises(WrongKeyError) as info:
        DecryptingReader(raw, key, name=NAME)
    assert raw.furthest <= victim.off, "read past the header before rejecting the key"
    assert NAME in str(info.value) and key.key_id in str(info.value)
    assert_no_leak(info.value)


def test_envelope_swapped_from_another_file_gives_the_wrong_key() -> None:
    a_data, b_data = encrypt(plaintext_of(250), KEY_A), encrypt(b"other file", KEY_B)
    b_header = gcm_stream.read_header(io.BytesIO(b_data))
    raw = io.BytesIO(a_data)
    header = gcm_stream.read_header(raw)
    assert gcm_stream.replace_envelope(raw, header, b_header.envelope)
    edited = raw.getvalue()
    assert len(edited) == len(a_data) and edited[header.body_offset :] == a_data[header.body_offset :]

    new_header = gcm_stream.read_header(io.BytesIO(edited))
    assert new_header.envelope == b_header.envelope
    unwrapped = unwrap(new_header.envelope[0])
    assert unwrapped == KEY_B
    counting = CountingRaw(edited)
    with pytest.raises(WrongKeyError) as info:
        DecryptingReader(counting, unwrapped, name=NAME)
    assert counting.furthest <= header.body_offset
    assert NAME in str(info.value)
    assert_no_leak(info.value)
    # The envelope is not authenticated: the right key still reads the file.
    assert read_whole(edited, KEY_A) == plaintext_of(250)


def test_in_place_rewrap_keeps_the_body_and_the_data() -> None:
    data = encrypt(plaintext_of(250), KEY_A)
    raw = io.BytesIO(data)
    header = gcm_stream.read_header(raw)
    new_envelope = (wrap(KEY_A, version="2"), wrap(KEY_A, version="3"))
    assert gcm_stream.replace_envelope(raw, header, new_envelope)
    edited = raw.getvalue()
    assert len(edited) == len(data)
    assert edited[:ENVELOPE_OFFSET] == data[:ENVELOPE_OFFSET]
    assert edited[header.body_offset :] == data[header.body_offset :]
    reread = gcm_stream.read_header(io.BytesIO(edited))
    assert [w.version for w in reread.envelope] == ["2", "3"]
    assert all(unwrap(w) == KEY_A for w in reread.envelope)
    assert read_whole(edited, unwrap(reread.envelope[0])) == plaintext_of(250)


def test_rewrap_that_does_not_fit_changes_nothing() -> None:
    data = encrypt(b"abc", KEY_A)
    raw = io.BytesIO(data)
    header = gcm_stream.read_header(raw)
    too_many = tuple(wrap(KEY_A, version=str(v)) for v in range(header.envelope_capacity // 50))
    assert not gcm_stream.replace_envelope(raw, header, too_many)
    assert raw.getvalue() == data


def test_error_messages_never_carry_plaintext_or_keys(victim: Parsed) -> None:
    """A catalogue of failures, each checked by :func:`assert_no_leak` (``expect`` checks it too)."""
    errors: list[BaseException] = []
    for data, key in [
        (victim.data[:-1], KEY_A),
        (victim.data[: victim.off - 1], KEY_A),
        (victim.data, KEY_B),
        (victim.data[:100] + b"\xff" + victim.data[101:], KEY_A),  # inside the envelope JSON
        (victim.data[:-20] + bytes(20), KEY_A),
    ]:
        try:
            read_whole(data, key)
        except PpmlError as exc:
            errors.append(exc)
    assert len(errors) == 5
    for exc in errors:
        assert NAME in str(exc)
        assert_no_leak(exc)
