"""Generate the ``aes_gcm_stream`` known-answer vectors from ``docs/format.md`` alone.

This script deliberately imports nothing from ppml: every byte is laid out here from the specification,
with fixed (non-random) file ids, salts and nonce prefixes so the output is reproducible. Run it from
anywhere::

    python tests/vectors/gcm_stream/make_vectors.py          # rewrite the *.json files beside it
    python tests/vectors/gcm_stream/make_vectors.py --check  # exit 1 if a stored vector differs

``tests/test_format_spec.py`` calls :func:`generate` and checks the stored files are its exact output.

Each vector is a JSON object; bytes are lowercase hex. Valid vectors (``"valid": true``) hold the inputs
(``data_key``, ``plaintext``, ``segment_size``, ``file_id``, ``salt``, ``nonce_prefix``, ``envelope``,
``envelope_capacity``), the complete file (``file``) and intermediate values (``associated_data``,
``commitment``, ``derived_key``, ``first_nonce``). Negative vectors (``"valid": false``) hold a damaged
``file``, the ``data_key`` to try, and the ``error`` (ppml error class name) and ``segment`` (index or
``null``) a conforming reader reports.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HERE = Path(__file__).resolve().parent

# --- the specification, as constants ----------------------------------------------------------------------
MAGIC = b"PPML"
VERSION = 1
ALGORITHM = 1  # AES256_GCM_HKDF
FIXED = ">4sBBHI16s32s"  # magic, version, algorithm, reserved, segment size, file id, commitment: 60 bytes
COMMITMENT_LABEL = b"ppml/v1/key-commitment"
BODY_HEADER_LEN = 40  # 0x28 || salt (32) || nonce prefix (7)
TAG = 16

# --- fixed inputs ------------------------------------------------------------------------------------------
DATA_KEY = bytes(range(32))
OTHER_KEY = bytes(range(32, 64))
FILE_ID = bytes(range(0xA0, 0xB0))
OTHER_FILE_ID = bytes(range(0xB0, 0xC0))
SALT = bytes(range(0x40, 0x60))
NONCE_PREFIX = bytes.fromhex("f0f1f2f3f4f5f6")
ENVELOPE = [{"kms": "test", "key": "vectors", "version": "1",
             "wrapped": base64.b64encode(b"wrapped-data-key").decode()}]


def stream(label: str, size: int) -> bytes:
    """Deterministic filler bytes: SHA-256(label || uint32_be(counter)) concatenated."""
    out = b"".join(hashlib.sha256(label.encode() + struct.pack(">I", i)).digest() for i in range(size // 32 + 1))
    return out[:size]


def envelope_area(entries: list[dict[str, str]], capacity: int | None) -> bytes:
    payload = json.dumps({"keys": entries}, separators=(",", ":")).encode()
    if capacity is None:  # the writer's rule: the smallest multiple of 512 holding twice the payload plus one
        capacity = -(-(2 * len(payload) + 1) // 512) * 512
    assert len(payload) <= capacity
    return struct.pack(">I", capacity) + payload.ljust(capacity, b" ")


def split_plaintext(plaintext: bytes, segment_size: int) -> list[bytes]:
    """Segment 0 holds segment_size - 56 bytes, later ones segment_size - 16; never an empty last segment
    unless the plaintext is empty."""
    first = segment_size - BODY_HEADER_LEN - TAG
    rest = segment_size - TAG
    pieces = [plaintext[:first]]
    pos = first
    while pos < len(plaintext):
        pieces.append(plaintext[pos : pos + rest])
        pos += rest
    return pieces


def build(*, plaintext: bytes, segment_size: int, key: bytes = DATA_KEY, file_id: bytes = FILE_ID,
          salt: bytes = SALT, nonce_prefix: bytes = NONCE_PREFIX, capacity: int | None = None,
          description: str) -> dict[str, object]:
    commitment = hmac.new(key, COMMITMENT_LABEL + file_id, hashlib.sha256).digest()
    authenticated = struct.pack(FIXED, MAGIC, VERSION, ALGORITHM, 0, segment_size, file_id, commitment)
    area = envelope_area(ENVELOPE, capacity)
    derived = HKDF(hashes.SHA256(), 32, salt, authenticated).derive(key)
    aead = AESGCM(derived)
    pieces = split_plaintext(plaintext, segment_size)
    nonces = [nonce_prefix + struct.pack(">IB", i, i == len(pieces) - 1) for i in range(len(pieces))]
    body = bytes([BODY_HEADER_LEN]) + salt + nonce_prefix
    body += b"".join(aead.encrypt(n, p, None) for n, p in zip(nonces, pieces))
    return {
        "description": description,
        "valid": True,
        "data_key": key.hex(),
        "plaintext": plaintext.hex(),
        "segment_size": segment_size,
        "file_id": file_id.hex(),
        "salt": salt.hex(),
        "nonce_prefix": nonce_prefix.hex(),
        "envelope": ENVELOPE,
        "envelope_capacity": struct.unpack(">I", area[:4])[0],
        "associated_data": authenticated.hex(),
        "commitment": commitment.hex(),
        "derived_key": derived.hex(),
        "first_nonce": nonces[0].hex(),
        "segment_count": len(pieces),
        "file": (authenticated + area + body).hex(),
    }


def negative(base: dict[str, object], name: str, file: bytes, *, error: str, segment: int | None,
             description: str, key: bytes = DATA_KEY) -> dict[str, object]:
    return {
        "description": description,
        "valid": False,
        "derived_from": name,
        "data_key": key.hex(),
        "segment_size": base["segment_size"],
        "file": file.hex(),
        "error": error,
        "segment": segment,
    }


def _segments(vector: dict[str, object]) -> tuple[bytes, list[bytes]]:
    """Split a valid vector's file into (everything before segment 0, [segments])."""
    data = bytes.fromhex(vector["file"])
    size = vector["segment_size"]
    body_offset = 64 + vector["envelope_capacity"]
    body = data[body_offset:]
    segments = [body[BODY_HEADER_LEN:size]] + [body[i : i + size] for i in range(size, len(body), size)]
    return data[: body_offset + BODY_HEADER_LEN], segments


def generate() -> dict[str, dict[str, object]]:
    v: dict[str, dict[str, object]] = {}
    v["empty"] = build(plaintext=b"", segment_size=64,
                       description="Empty plaintext: one segment holding only its tag, sealed as last.")
    v["hello"] = build(plaintext=b"hello, ppml!", segment_size=64, capacity=96,
                       description="12 bytes in 64-byte segments: 8 bytes in segment 0, 4 in segment 1 (last). "
                                   "Envelope area of 96 bytes (any capacity >= the JSON is valid). "
                                   "Reproduced in docs/format.md.")
    v["full_last_segment"] = build(plaintext=stream("full_last_segment", 8 + 5 * 48), segment_size=64,
                                   description="248 bytes = 8 + 5 * 48: six segments, the last one full.")
    v["short_last_segment"] = build(plaintext=stream("short_last_segment", 500), segment_size=100,
                                    description="500 bytes in 100-byte segments: 44 + 5 * 84 + 36.")
    v["preset_4kb"] = build(plaintext=stream("preset_4kb", 9000), segment_size=4096,
                            description="AES256_GCM_HKDF_4KB: 9000 bytes = 4040 + 4080 + 880.")

    base = v["full_last_segment"]
    head, segs = _segments(base)
    flipped = bytearray(bytes.fromhex(base["file"]))
    flipped[len(head) + len(segs[0]) + 2 * 64 - 1] ^= 0x01  # last byte (tag) of segment 2
    v["bad_flipped_tag"] = negative(base, "full_last_segment", bytes(flipped), error="IntegrityError", segment=2,
                                    description="One bit of segment 2's tag flipped.")
    v["bad_truncated_at_boundary"] = negative(
        base, "full_last_segment", head + b"".join(segs[:4]), error="IntegrityError", segment=3,
        description="Last two segments dropped: segment 3 was sealed as not-last.")
    v["bad_truncated_to_tag_length"] = negative(
        base, "full_last_segment", head + b"".join(segs[:3]) + segs[3][:16], error="IntegrityError", segment=3,
        description="Cut 16 bytes into segment 3: looks like an empty last segment, which must still fail.")
    v["bad_reordered"] = negative(
        base, "full_last_segment", head + b"".join([segs[0], segs[2], segs[1], *segs[3:]]),
        error="IntegrityError", segment=1, description="Segments 1 and 2 swapped.")
    v["bad_appended"] = negative(
        base, "full_last_segment", head + b"".join(segs) + segs[5][:20], error="IntegrityError", segment=5,
        description="20 bytes appended after the (full) last segment.")
    v["bad_wrong_key"] = negative(
        base, "full_last_segment", bytes.fromhex(base["file"]), key=OTHER_KEY, error="WrongKeyError",
        segment=None, description="Intact file, other data key: the key commitment does not match.")
    other = build(plaintext=b"hello, ppml!", segment_size=64, capacity=96, file_id=OTHER_FILE_ID,
                  description="(not stored)")
    hello = bytes.fromhex(v["hello"]["file"])
    v["bad_header_swapped"] = negative(
        v["hello"], "hello", bytes.fromhex(other["file"])[:160] + hello[160:], error="IntegrityError", segment=0,
        description="hello's body behind the header of another file under the same data key (other file id, "
                    "valid commitment): the associated data differs.")
    bad_magic = bytearray(hello)
    bad_magic[0:4] = b"PPMX"
    v["bad_magic"] = negative(v["hello"], "hello", bytes(bad_magic), error="CorruptHeaderError", segment=None,
                              description="Magic bytes changed.")
    return v


def dump(vector: dict[str, object]) -> str:
    return json.dumps(vector, indent=1) + "\n"


def main(argv: list[str]) -> int:
    vectors = generate()
    if "--check" in argv:
        bad = [n for n, vec in vectors.items() if (HERE / f"{n}.json").read_text() != dump(vec)]
        print("differ:", ", ".join(bad) if bad else "none")
        return 1 if bad else 0
    for name, vector in vectors.items():
        (HERE / f"{name}.json").write_text(dump(vector))
    print(f"wrote {len(vectors)} vectors to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
