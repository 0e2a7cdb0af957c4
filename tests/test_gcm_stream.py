"""Behaviour of the ``aes_gcm_stream`` file objects: round trips, random access, lines, data tools, memory.

Segment sizes are kept small (57..4096 bytes) so that a few hundred bytes span many segments and every
boundary of :class:`ppml.crypto._streaming.SegmentLayout` is reached quickly.
"""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppml.crypto import gcm_stream
from ppml.crypto._streaming import BODY_HEADER_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE, TAG_SIZE, SegmentLayout
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.gcm_stream import DecryptingReader, EncryptingWriter
from ppml.errors import IntegrityError

ENVELOPE = (WrappedKey("test", "unit", "1", b"opaque wrapped key, never unwrapped in these tests"),)
KEY = DataKey(bytes(range(32)))
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encrypt(plaintext: bytes, *, segment_size: int, key: DataKey = KEY, chunks: list[int] | None = None) -> bytes:
    """Encrypt ``plaintext``; ``chunks`` are write sizes used cyclically (0 = an empty write)."""
    raw = io.BytesIO()
    with EncryptingWriter(raw, key, ENVELOPE, segment_size=segment_size) as writer:
        if not chunks:
            assert writer.write(plaintext) == len(plaintext)
        else:
            pos, i = 0, 0
            while pos < len(plaintext):
                size = chunks[i % len(chunks)]
                i += 1
                if i > 4 * len(plaintext) + 10:  # only zero-sized chunks: finish in one go
                    size = len(plaintext)
                assert writer.write(plaintext[pos : pos + size]) == len(plaintext[pos : pos + size])
                pos += size
    return raw.getvalue()


def open_reader(data: bytes, *, key: DataKey = KEY, name: str = "mem.ppml") -> DecryptingReader:
    return DecryptingReader(io.BytesIO(data), key, name=name)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class CountingRaw(io.BytesIO):
    """A BytesIO that logs every read as ``(offset, length)``."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def read(self, size: int | None = -1) -> bytes:
        start = self.tell()
        data = super().read(size)
        self.reads.append((start, len(data)))
        return data

    def readinto(self, buffer) -> int:
        start = self.tell()
        n = super().readinto(buffer)
        self.reads.append((start, n))
        return n


def boundary_sizes(segment_size: int) -> list[int]:
    layout = SegmentLayout(segment_size)
    first, plain = layout.first_plain, layout.plain
    sizes = {0, 1, segment_size - 1, segment_size, segment_size + 1}
    for edge in (first, first + plain, first + 2 * plain, first + 5 * plain):
        sizes |= {edge - 1, edge, edge + 1}
    return sorted(s for s in sizes if s >= 0)


# ---------------------------------------------------------------------------------------------------------
# Round trips


def test_layout_capacities_match_the_spec() -> None:
    layout = SegmentLayout(4096)
    assert layout.first_plain == 4096 - BODY_HEADER_SIZE - TAG_SIZE == 4040
    assert layout.plain == 4096 - TAG_SIZE == 4080
    assert [layout.ciphertext_start(i) for i in range(4)] == [BODY_HEADER_SIZE, 4096, 8192, 12288]
    assert [layout.plaintext_start(i) for i in range(3)] == [0, 4040, 8120]


@pytest.mark.parametrize("segment_size", [MIN_SEGMENT_SIZE, 64, 100, 1000, 4096])
def test_round_trip_at_every_segment_boundary(segment_size: int) -> None:
    layout = SegmentLayout(segment_size)
    for size in boundary_sizes(segment_size):
        plaintext = payload(size, seed=size)
        data = encrypt(plaintext, segment_size=segment_size)
        reader = open_reader(data)
        assert len(data) == reader.header.body_offset + layout.body_size(size), size
        assert reader.size == size
        assert reader.segment_count == (1 if size <= layout.first_plain else
                                        2 + (size - layout.first_plain - 1) // layout.plain)
        assert reader.read() == plaintext, size
        assert reader.read() == b""
        assert reader.verify() == size


@pytest.mark.parametrize("bad", [MIN_SEGMENT_SIZE - 1, 0, MAX_SEGMENT_SIZE + 1])
def test_segment_size_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="segment size"):
        EncryptingWriter(io.BytesIO(), KEY, ENVELOPE, segment_size=bad)


@FAST
@given(
    segment_size=st.integers(64, 4096),
    size=st.integers(0, 20_000),
    chunks=st.lists(st.integers(0, 9000), min_size=1, max_size=8),
    seed=st.integers(0, 2**32),
)
def test_round_trip_random_sizes_and_chunked_writes(segment_size: int, size: int, chunks: list[int],
                                                    seed: int) -> None:
    plaintext = payload(size, seed)
    data = encrypt(plaintext, segment_size=segment_size, chunks=chunks)
    # Chunking must not change the layout: same size as a single write would give.
    assert len(data) == open_reader(data).header.body_offset + SegmentLayout(segment_size).body_size(size)
    assert open_reader(data).read() == plaintext


@pytest.mark.parametrize("segment_size", [64, 4096])
def test_many_segments(segment_size: int) -> None:
    layout = SegmentLayout(segment_size)
    plaintext = payload(layout.first_plain + 299 * layout.plain + 17, seed=segment_size)
    reader = open_reader(encrypt(plaintext, segment_size=segment_size))
    assert reader.segment_count == 301
    out = bytearray()
    while chunk := reader.read(777):
        out += chunk
    assert out == plaintext


def test_readinto_read1_peek_and_tell() -> None:
    plaintext = payload(500, 7)
    reader = open_reader(encrypt(plaintext, segment_size=64))
    buf = bytearray(100)
    assert reader.readinto(buf) == 100 and buf == plaintext[:100]
    assert reader.tell() == 100
    assert plaintext[100:].startswith(reader.peek())
    assert reader.tell() == 100
    assert reader.read1(10) == plaintext[100:110]
    reader.seek(-5, io.SEEK_END)
    assert reader.read() == plaintext[-5:]
    assert reader.peek() == b""


# ---------------------------------------------------------------------------------------------------------
# Random access


@FAST
@given(
    segment_size=st.integers(57, 512),
    size=st.integers(0, 5000),
    ranges=st.lists(st.tuples(st.integers(0, 5200), st.integers(0, 2000)), min_size=1, max_size=10),
)
def test_random_ranges_match_the_plaintext(segment_size: int, size: int, ranges: list[tuple[int, int]]) -> None:
    plaintext = payload(size, size)
    reader = open_reader(encrypt(plaintext, segment_size=segment_size))
    for start, length in ranges:
        assert reader.seek(start) == start
        assert reader.read(length) == plaintext[start : start + length]
        assert reader.tell() == start + len(plaintext[start : start + length])
        # The other two whence values reach the same place.
        reader.seek(start - reader.tell(), io.SEEK_CUR)
        assert reader.tell() == start
        reader.seek(start - size, io.SEEK_END)
        assert reader.read(length) == plaintext[start : start + length]


def test_negative_seek_and_bad_whence_are_refused() -> None:
    reader = open_reader(encrypt(b"abc", segment_size=64))
    with pytest.raises(ValueError):
        reader.seek(-1)
    with pytest.raises(ValueError):
        reader.seek(0, 7)


def _segment_span(layout: SegmentLayout, body_offset: int, body_size: int, index: int) -> tuple[int, int]:
    start = layout.ciphertext_start(index)
    end = min((index + 1) * layout.segment_size, body_size)
    return body_offset + start, body_offset + end


@FAST
@given(
    segment_size=st.integers(64, 1024),
    size=st.integers(1, 8000),
    start=st.integers(0, 8100),
    length=st.integers(1, 3000),
)
def test_random_access_reads_only_the_covering_segments(segment_size: int, size: int, start: int,
                                                       length: int) -> None:
    plaintext = payload(size, 3)
    data = encrypt(plaintext, segment_size=segment_size)
    raw = CountingRaw(data)
    reader = DecryptingReader(raw, KEY, name="counted.ppml")
    header_end = reader.header.body_offset + BODY_HEADER_SIZE
    # Opening reads the header and the body header, nothing else.
    assert all(off + n <= header_end for off, n in raw.reads)
    assert sum(n for _, n in raw.reads) <= header_end

    raw.reads.clear()
    reader.seek(start)
    got = reader.read(length)
    assert got == plaintext[start : start + length]

    layout = SegmentLayout(segment_size)
    body_size = len(data) - reader.header.body_offset
    last = reader.segment_count - 1
    if start >= size:
        covering = [last]
    else:
        end = min(start + length, size) - 1
        covering = list(range(layout.segment_of(start), layout.segment_of(end) + 1))
        if start + length >= size:
            covering = sorted(set(covering) | {last})
    spans = [_segment_span(layout, reader.header.body_offset, body_size, i) for i in covering]
    allowed = sum(e - s for s, e in spans)
    assert sum(n for _, n in raw.reads) <= allowed
    for off, n in raw.reads:
        assert any(s <= off and off + n <= e for s, e in spans), (off, n, spans)


# ---------------------------------------------------------------------------------------------------------
# Lines and text


@FAST
@given(
    segment_size=st.integers(57, 300),
    lines=st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"),
                           max_size=200), max_size=40),
    final_newline=st.booleans(),
)
def test_readline_and_iteration(segment_size: int, lines: list[str], final_newline: bool) -> None:
    text = "\n".join(lines) + ("\n" if final_newline and lines else "")
    plaintext = text.encode("utf-8")
    data = encrypt(plaintext, segment_size=segment_size)
    expected = plaintext.splitlines(keepends=True)

    assert list(open_reader(data)) == expected
    reader = open_reader(data)
    assert [reader.readline() for _ in expected] == expected
    assert reader.readline() == b""
    assert open_reader(data).readlines() == expected
    # readline with a limit returns at most that many bytes.
    reader = open_reader(data)
    pieces = []
    while piece := reader.readline(7):
        assert len(piece) <= 7
        pieces.append(piece)
    assert b"".join(pieces) == plaintext
    # Text decoding across segment boundaries (multi-byte characters may straddle two segments).
    with io.TextIOWrapper(open_reader(data), encoding="utf-8", newline="") as wrapped:
        assert wrapped.read() == text


# ---------------------------------------------------------------------------------------------------------
# Data tools read the file object directly


def _csv_bytes(rows: int = 3000) -> bytes:
    out = ["id,name,score,note"]
    for i in range(rows):
        out.append(f'{i},name-{i},{i * 0.25},"quoted, {i % 7}"')
    return ("\n".join(out) + "\n").encode()


@pytest.fixture(scope="module")
def encrypted_csv() -> tuple[bytes, bytes]:
    plaintext = _csv_bytes()
    return plaintext, encrypt(plaintext, segment_size=256)


def test_pyarrow_csv_reads_the_reader(encrypted_csv: tuple[bytes, bytes]) -> None:
    pacsv = pytest.importorskip("pyarrow.csv")
    plaintext, data = encrypted_csv
    table = pacsv.read_csv(open_reader(data, name="table.csv.ppml"))
    assert table.equals(pacsv.read_csv(io.BytesIO(plaintext)))
    assert table.num_rows == 3000


def test_pandas_reads_the_reader(encrypted_csv: tuple[bytes, bytes]) -> None:
    pd = pytest.importorskip("pandas")
    plaintext, data = encrypted_csv
    frame = pd.read_csv(open_reader(data, name="table.csv.ppml"))
    pd.testing.assert_frame_equal(frame, pd.read_csv(io.BytesIO(plaintext)))
    # Text mode through a wrapper, as pandas users do with open(..., "r").
    frame = pd.read_csv(io.TextIOWrapper(open_reader(data), encoding="utf-8", newline=""))
    assert frame.shape == (3000, 4)


def test_duckdb_reads_the_reader(encrypted_csv: tuple[bytes, bytes]) -> None:
    # DuckDB (1.1 and 2.x) accepts a Python binary file object in read_csv: it registers it through its
    # fsspec bridge and reads it with read/seek/tell, so no filesystem registration is needed.
    duckdb = pytest.importorskip("duckdb")
    plaintext, data = encrypted_csv
    with duckdb.connect() as con:
        rel = con.read_csv(open_reader(data, name="table.csv.ppml"), header=True)
        got = rel.aggregate("count(*), sum(id), max(name), sum(score)").fetchall()
        want = con.read_csv(io.BytesIO(plaintext), header=True).aggregate(
            "count(*), sum(id), max(name), sum(score)").fetchall()
        assert got == want == [(3000, sum(range(3000)), "name-999", sum(i * 0.25 for i in range(3000)))]
        rows = con.read_csv(open_reader(data), header=True).order("id").fetchall()
        assert rows[:2] == [(0, "name-0", 0.0, "quoted, 0"), (1, "name-1", 0.25, "quoted, 1")]


# ---------------------------------------------------------------------------------------------------------
# Uniqueness per file


def test_same_key_two_files_share_nothing() -> None:
    plaintext = payload(1000, 11)
    first, second = (encrypt(plaintext, segment_size=64) for _ in range(2))
    h1, h2 = (gcm_stream.read_header(io.BytesIO(d)) for d in (first, second))
    assert h1.file_id != h2.file_id
    assert h1.commitment != h2.commitment
    assert h1.authenticated != h2.authenticated
    b1, b2 = first[h1.body_offset :], second[h2.body_offset :]
    assert len(b1) == len(b2)
    assert b1[0] == b2[0] == BODY_HEADER_SIZE
    assert b1[1:33] != b2[1:33]  # salt
    assert b1[33:40] != b2[33:40]  # nonce prefix
    for i in range(0, len(b1), 64):  # no ciphertext segment repeats
        assert b1[i : i + 64] != b2[i : i + 64]
    assert open_reader(first).read() == open_reader(second).read() == plaintext


# ---------------------------------------------------------------------------------------------------------
# Memory and the writer's contract


class WriteLog(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def write(self, data) -> int:
        self.writes.append(len(memoryview(data)))
        return super().write(data)


@FAST
@given(
    segment_size=st.integers(57, 2048),
    chunks=st.lists(st.integers(0, 20_000), min_size=1, max_size=12),
)
def test_writer_holds_at_most_one_segment(segment_size: int, chunks: list[int]) -> None:
    layout = SegmentLayout(segment_size)
    raw = WriteLog()
    writer = EncryptingWriter(raw, KEY, ENVELOPE, segment_size=segment_size)
    assert len(raw.writes) == 1  # the header (with the body header) in one write
    written = 0
    for size in chunks:
        writer.write(bytes(size))
        written += size
        segments = raw.writes[1:]
        assert all(n <= segment_size for n in segments)
        emitted = sum(layout.plain_capacity(i) for i in range(len(segments)))
        buffered = written - emitted
        # Whatever has not been sealed yet fits in the segment being filled.
        assert 0 <= buffered <= layout.plain_capacity(len(segments))
        assert writer._fill == buffered  # white-box: the only plaintext held is that segment's
        assert len(writer._plain) <= layout.plain_capacity(1)
    writer.close()
    assert all(n <= segment_size for n in raw.writes[1:])
    assert open_reader(raw.getvalue()).size == written


def test_writer_close_does_not_close_raw_and_refuses_more_writes() -> None:
    raw = io.BytesIO()
    writer = EncryptingWriter(raw, KEY, ENVELOPE, segment_size=64)
    writer.write(b"abc")
    assert writer.tell() == 3
    writer.close()
    writer.close()  # idempotent
    assert not raw.closed
    with pytest.raises(ValueError):
        writer.write(b"more")
    reader = open_reader(raw.getvalue())
    reader.close()
    assert reader.closed
    with pytest.raises(ValueError):
        reader.read()


def test_writer_left_by_an_exception_leaves_a_file_that_fails_as_truncated() -> None:
    for size in (0, 5, 200):
        raw = io.BytesIO()
        with pytest.raises(RuntimeError):
            with EncryptingWriter(raw, KEY, ENVELOPE, segment_size=64) as writer:
                writer.write(payload(size))
                raise RuntimeError("job failed")
        with pytest.raises(IntegrityError, match="mem.ppml"):
            open_reader(raw.getvalue()).read()


def test_writer_refuses_a_short_key_and_an_empty_envelope() -> None:
    with pytest.raises(ValueError, match="32-byte"):
        EncryptingWriter(io.BytesIO(), DataKey(b"short"), ENVELOPE, segment_size=64)
    with pytest.raises(ValueError, match="wrapped"):
        EncryptingWriter(io.BytesIO(), KEY, (), segment_size=64)
