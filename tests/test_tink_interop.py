"""The ``aes_gcm_stream`` body is Tink's ``AES256_GCM_HKDF`` streaming AEAD, in both directions.

ppml → Tink: the body of a ppml file (from byte ``body_offset``) decrypts with Tink's
``new_decrypting_stream`` under associated data = the 60 authenticated header bytes.
Tink → ppml: a body from Tink's ``new_encrypting_stream`` under associated data = an authenticated header
we build from the spec, behind ``encode_header``'s envelope area, is a ppml file our reader opens.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import random
import struct

import pytest

tink = pytest.importorskip("tink")
from tink import cleartext_keyset_handle, streaming_aead  # noqa: E402
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2  # noqa: E402

from ppml.crypto import gcm_stream  # noqa: E402
from ppml.crypto._streaming import SegmentLayout  # noqa: E402
from ppml.crypto.datakey import DataKey  # noqa: E402
from ppml.crypto.envelope import WrappedKey  # noqa: E402
from ppml.crypto.gcm_stream import DecryptingReader, EncryptingWriter  # noqa: E402
from ppml.errors import IntegrityError  # noqa: E402

ENVELOPE = (WrappedKey("test", "interop", "1", b"opaque"),)
MiB = 1024 * 1024


def tink_primitive(raw_key: bytes, segment_size: int):
    key = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(
        version=0,
        key_value=raw_key,
        params=aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingParams(
            ciphertext_segment_size=segment_size, derived_key_size=32, hkdf_hash_type=common_pb2.SHA256),
    )
    keyset = tink_pb2.Keyset(primary_key_id=1, key=[tink_pb2.Keyset.Key(
        key_data=tink_pb2.KeyData(
            type_url="type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey",
            value=key.SerializeToString(),
            key_material_type=tink_pb2.KeyData.SYMMETRIC),
        status=tink_pb2.ENABLED, key_id=1, output_prefix_type=tink_pb2.RAW)])
    streaming_aead.register()
    return cleartext_keyset_handle.from_keyset(keyset).primitive(streaming_aead.StreamingAead)


class _Sink(io.BytesIO):
    """Tink closes its destination when the stream closes; keep the bytes readable."""

    def close(self) -> None:
        pass


def tink_encrypt(primitive, plaintext: bytes, associated_data: bytes) -> bytes:
    sink = _Sink()
    with primitive.new_encrypting_stream(sink, associated_data) as stream:
        view = memoryview(plaintext)
        while view:  # in uneven pieces, as a producer would
            n = min(len(view), 100_003)
            stream.write(view[:n])
            view = view[n:]
    return sink.getvalue()


def tink_decrypt(primitive, body: bytes, associated_data: bytes) -> bytes:
    with primitive.new_decrypting_stream(io.BytesIO(body), associated_data) as stream:
        return stream.read()


def authenticated_header(key: bytes, segment_size: int, file_id: bytes) -> bytes:
    """The 60 authenticated bytes, built from docs/format.md (not from ppml code)."""
    commitment = hmac.new(key, b"ppml/v1/key-commitment" + file_id, hashlib.sha256).digest()
    return struct.pack(">4sBBHI16s32s", b"PPML", 1, 1, 0, segment_size, file_id, commitment)


def sizes_for(segment_size: int) -> list[int]:
    layout = SegmentLayout(segment_size)
    f, p = layout.first_plain, layout.plain
    return sorted({0, 1, f - 1, f, f + 1, f + p - 1, f + p, f + p + 1, f + 3 * p + 123})


CASES = [(64, n) for n in sizes_for(64)] + [(4096, n) for n in sizes_for(4096)] + [(MiB, 2 * MiB + 12_345)]


def _ids(case: tuple[int, int]) -> str:
    return f"seg{case[0]}-{case[1]}B"


@pytest.mark.parametrize("segment_size,size", CASES, ids=[_ids(c) for c in CASES])
def test_ppml_body_decrypts_with_tink(segment_size: int, size: int) -> None:
    raw_key = os.urandom(32)
    plaintext = random.Random(size).randbytes(size)
    out = io.BytesIO()
    with EncryptingWriter(out, DataKey(raw_key), ENVELOPE, segment_size=segment_size) as writer:
        writer.write(plaintext)
    data = out.getvalue()
    header = gcm_stream.read_header(io.BytesIO(data))
    assert len(header.authenticated) == 60
    primitive = tink_primitive(raw_key, segment_size)
    assert tink_decrypt(primitive, data[header.body_offset :], header.authenticated) == plaintext
    # Tink itself refuses our body under any other associated data.
    with pytest.raises(tink.TinkError):
        other = header.authenticated[:-1] + bytes([header.authenticated[-1] ^ 1])  # always different
        tink_decrypt(primitive, data[header.body_offset :], other)


@pytest.mark.parametrize("segment_size,size", CASES, ids=[_ids(c) for c in CASES])
def test_tink_body_reads_through_ppml(segment_size: int, size: int) -> None:
    raw_key = os.urandom(32)
    plaintext = random.Random(size + 1).randbytes(size)
    authenticated = authenticated_header(raw_key, segment_size, os.urandom(16))
    body = tink_encrypt(tink_primitive(raw_key, segment_size), plaintext, authenticated)
    assert len(body) == SegmentLayout(segment_size).body_size(size)  # Tink's sizes are ours
    data = gcm_stream.encode_header(authenticated, ENVELOPE) + body

    reader = DecryptingReader(io.BytesIO(data), DataKey(raw_key), name="from-tink.ppml")
    assert reader.size == size
    assert reader.read() == plaintext
    # Random access into Tink's output: Tink's Python API cannot do this, ours can.
    rng = random.Random(7)
    for _ in range(5):
        start = rng.randrange(size + 1)
        length = rng.randrange(3 * segment_size)
        reader.seek(start)
        assert reader.read(length) == plaintext[start : start + length]
    assert reader.verify() == size


def test_tink_body_under_other_associated_data_is_refused() -> None:
    raw_key = os.urandom(32)
    authenticated = authenticated_header(raw_key, 4096, os.urandom(16))
    other = authenticated_header(raw_key, 4096, os.urandom(16))
    body = tink_encrypt(tink_primitive(raw_key, 4096), b"x" * 10_000, other)
    data = gcm_stream.encode_header(authenticated, ENVELOPE) + body
    with pytest.raises(IntegrityError) as info:
        DecryptingReader(io.BytesIO(data), DataKey(raw_key), name="spliced.ppml").read()
    assert info.value.segment == 0 and "spliced.ppml" in str(info.value)


def test_presets_are_tinks_segment_sizes() -> None:
    # Tink's AES256_GCM_HKDF_4KB / _1MB templates: 32-byte key and derived key, HKDF-SHA256,
    # 4096 / 1048576-byte ciphertext segments; 64KB is the same with 65536.
    assert gcm_stream.SEGMENT_PRESETS == {
        "AES256_GCM_HKDF_4KB": 4096,
        "AES256_GCM_HKDF_64KB": 65536,
        "AES256_GCM_HKDF_1MB": MiB,
    }
    for name in ("AES256_GCM_HKDF_4KB", "AES256_GCM_HKDF_1MB"):
        template = getattr(streaming_aead.streaming_aead_key_templates, name)
        params = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKeyFormat.FromString(template.value).params
        assert params.ciphertext_segment_size == gcm_stream.SEGMENT_PRESETS[name]
        assert params.derived_key_size == 32 and params.hkdf_hash_type == common_pb2.SHA256
