"""Build the BigDL PPML known-answer vectors in this directory from the format spec.

Uses only the Python standard library and ``cryptography`` primitives, never ppml, so that the vectors
check ppml against the BigDL format description (``/work/shared/reference/bigdl.md``) rather than against
itself. Everything is deterministic: fixed keys, fixed IVs.

Run ``python tests/vectors/bigdl/make_vectors.py`` to (re)write the files; the test suite calls
:func:`build` and checks that the files on disk are byte-for-byte what it returns.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

HERE = Path(__file__).resolve().parent

CSV = b"id,name,amount\n1,alice,10.50\n2,bob,7.25\n"

# Test-only keys. Never use them for real data.
PRIMARY_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")  # the FIPS-197 / SP 800-38A example AES key
DATA_KEY = base64.b64encode(bytes(range(32))).decode("ascii")  # 44 characters
SIMPLE_PRIMARY_KEY = "1234567890123456"  # appId 123456789012 + 3456
SIMPLE_DATA_KEY = "5029384756102938"

IV_MAIN = bytes(range(0xA0, 0xB0))
IV_EMPTY = bytes(range(0xB0, 0xC0))
IV_SIMPLE = bytes(range(0xC0, 0xD0))


def ecb_wrap(primary_key: bytes, data_key: str) -> str:
    """BigDL plaintext primary key: base64(AES-ECB-PKCS5(primary key, UTF-8 of the data key string))."""
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data_key.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(primary_key), modes.ECB()).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode("ascii")


def simple_wrap(primary_key: str, data_key: str) -> str:
    """BigDL SimpleKeyManagementService: c[i] = (pk[i] + d[i]) mod 10."""
    return "".join(str((int(p) + int(d)) % 10) for p, d in zip(primary_key, data_key))


def bigdl_v2_file(data_key: str, encrypted_data_key: str, iv: bytes, plaintext: bytes) -> bytes:
    """A BigDL v2 ``aes/cbc/pkcs5padding`` file, laid out exactly as the spec's table says."""
    secret = data_key.encode("ascii")
    mac_key = secret[0:16].ljust(16, b"\0")
    aes_key = secret[16:32].ljust(16, b"\0")
    key_bytes = encrypted_data_key.encode("ascii")
    header = struct.pack(">ii", len(key_bytes), 16) + key_bytes + iv
    header = header + b"\x80" * (400 - len(header))
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    tag = hmac.new(mac_key, ciphertext, hashlib.sha256).digest()
    return header + ciphertext + tag


def meta(encrypted_data_key: str) -> bytes:
    """BigDL's ``.meta``: Jackson default pretty printer output plus a newline."""
    return ('{\n  "encryptedDataKey" : "' + encrypted_data_key + '"\n}\n').encode("ascii")


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def build() -> dict[str, bytes]:
    """Every vector file, by path relative to this directory."""
    files: dict[str, bytes] = {}
    edk = ecb_wrap(PRIMARY_KEY, DATA_KEY)
    main = bigdl_v2_file(DATA_KEY, edk, IV_MAIN, CSV)
    files["plaintext-key/part-00000-c000.csv.cbc"] = main
    files["plaintext-key/part-00001-c000.csv.cbc"] = bigdl_v2_file(DATA_KEY, edk, IV_EMPTY, b"")
    files["plaintext-key/.meta"] = meta(edk)

    simple_edk = simple_wrap(SIMPLE_PRIMARY_KEY, SIMPLE_DATA_KEY)
    files["simple-kms/part-00000-c000.csv.cbc"] = bigdl_v2_file(SIMPLE_DATA_KEY, simple_edk, IV_SIMPLE, CSV)
    files["simple-kms/.meta"] = meta(simple_edk)
    files["simple-kms/primary-key.txt"] = (SIMPLE_PRIMARY_KEY + "\n").encode("ascii")

    files["negative/flipped-ciphertext.csv.cbc"] = _flip(main, 400 + 5)
    files["negative/flipped-hmac.csv.cbc"] = _flip(main, len(main) - 1)
    files["negative/truncated.csv.cbc"] = main[:-1]
    files["negative/appended.csv.cbc"] = main + b"\n"
    files["negative/bad-iv-length.csv.cbc"] = main[:4] + struct.pack(">i", 15) + main[8:]
    files["negative/bad-fill.csv.cbc"] = main[:399] + b"\x00" + main[400:]

    vectors = {
        "plaintext": CSV.decode("ascii"),
        "plaintext_key": {
            "primary_key_base64": base64.b64encode(PRIMARY_KEY).decode("ascii"),
            "data_key": DATA_KEY,
            "encrypted_data_key": edk,
            "files": {
                "plaintext-key/part-00000-c000.csv.cbc": {"iv": IV_MAIN.hex(), "plaintext": CSV.decode("ascii")},
                "plaintext-key/part-00001-c000.csv.cbc": {"iv": IV_EMPTY.hex(), "plaintext": ""},
            },
        },
        "simple_kms": {
            "primary_key": SIMPLE_PRIMARY_KEY,
            "data_key": SIMPLE_DATA_KEY,
            "encrypted_data_key": simple_edk,
            "files": {
                "simple-kms/part-00000-c000.csv.cbc": {"iv": IV_SIMPLE.hex(), "plaintext": CSV.decode("ascii")},
            },
        },
        "negative": {
            "data_key": DATA_KEY,
            "files": {
                "negative/flipped-ciphertext.csv.cbc": "IntegrityError",
                "negative/flipped-hmac.csv.cbc": "IntegrityError",
                "negative/truncated.csv.cbc": "IntegrityError",
                "negative/appended.csv.cbc": "IntegrityError",
                "negative/bad-iv-length.csv.cbc": "CorruptHeaderError",
                "negative/bad-fill.csv.cbc": "CorruptHeaderError",
            },
        },
    }
    files["vectors.json"] = (json.dumps(vectors, indent=2, sort_keys=True) + "\n").encode("ascii")
    return files


def main(argv: list[str] | None = None) -> int:
    for relative, data in build().items():
        path = HERE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {relative} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
