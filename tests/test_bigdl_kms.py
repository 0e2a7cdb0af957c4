"""BigDL-compatible key unwrapping: the plaintext primary key and the (insecure) SimpleKMS."""

from __future__ import annotations

import base64
import copy
import io
import os
import pickle
import warnings

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from ppml.crypto.bigdl_cbc_format import BigdlCbcFormat
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import ConfigError, IntegrityError, KeyAccessError, NotFoundError
from ppml.keys.bigdl import PlaintextPrimaryKeyKms, PpmlInsecureWarning, SimpleKms
from ppml.keys.kms import kms_class, open_kms

PRIMARY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
DATA_KEY_STRING = "MDEyMzQ1Njc4OWFiY2RlZg=="  # a 24-character key as BigDL itself makes
HYPO = settings(max_examples=30, deadline=None)


def ecb_wrap_by_hand(primary: bytes, data_key: str) -> bytes:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data_key.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(primary), modes.ECB()).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize())


def simple(**kwargs) -> SimpleKms:
    with pytest.warns(PpmlInsecureWarning):
        return SimpleKms(allow_insecure=True, **kwargs)


# --- PlaintextPrimaryKeyKms -------------------------------------------------------------------------------

def test_registry_names():
    assert kms_class("bigdl-plaintext") is PlaintextPrimaryKeyKms
    assert kms_class("SimpleKeyManagementService") is SimpleKms
    assert kms_class("simplekms") is SimpleKms
    assert isinstance(open_kms("bigdl-plaintext", primary_key=PRIMARY), PlaintextPrimaryKeyKms)


def test_plaintext_known_answer():
    kms = PlaintextPrimaryKeyKms(PRIMARY)
    expected = ecb_wrap_by_hand(PRIMARY, DATA_KEY_STRING)
    assert len(expected) == 44  # the spec: 24-character data keys wrap to 44 characters
    wrapped = kms.wrap(DataKey(DATA_KEY_STRING.encode()), "ignored")
    assert wrapped.wrapped == expected
    assert (wrapped.kms, wrapped.key, wrapped.version) == ("bigdl-plaintext", kms.fingerprint, "")
    # A key string as read from a BigDL header or .meta carries kms="bigdl".
    assert kms.unwrap(WrappedKey("bigdl", "", "", expected)).unsafe_material() == DATA_KEY_STRING.encode()


@pytest.mark.parametrize("size", [16, 24, 32])
def test_plaintext_round_trip(size):
    kms = PlaintextPrimaryKeyKms(os.urandom(size))
    key, wrapped = kms.generate_data_key("default")
    material = key.unsafe_material()
    assert len(material) == 44 and len(base64.b64decode(material, validate=True)) == 32
    assert kms.unwrap(wrapped) == key
    assert wrapped.wrapped == ecb_wrap_by_hand(kms._PlaintextPrimaryKeyKms__primary_key, material.decode())
    assert kms.generate_data_key("default")[0] != key


def test_plaintext_from_base64():
    kms = PlaintextPrimaryKeyKms.from_base64(base64.b64encode(PRIMARY).decode() + "\n")
    assert kms.fingerprint == PlaintextPrimaryKeyKms(PRIMARY).fingerprint
    with pytest.raises(ConfigError, match="base64"):
        PlaintextPrimaryKeyKms.from_base64("not base64!")


@pytest.mark.parametrize("size", [0, 1, 15, 17, 31, 33, 64])
def test_plaintext_rejects_bad_key_sizes(size):
    with pytest.raises(ConfigError, match="16, 24 or 32"):
        PlaintextPrimaryKeyKms(b"k" * size)


def test_plaintext_rejects_non_bytes():
    with pytest.raises(TypeError):
        PlaintextPrimaryKeyKms(base64.b64encode(PRIMARY).decode())


@pytest.mark.parametrize("wrong", [bytes(16), bytes(range(1, 17)), b"\xff" * 16, bytes(range(100, 124))])
def test_plaintext_wrong_primary_key(wrong):
    wrapped = PlaintextPrimaryKeyKms(PRIMARY).wrap(DataKey(DATA_KEY_STRING.encode()), "k")
    as_read = WrappedKey("bigdl", "", "", wrapped.wrapped)
    with pytest.raises(KeyAccessError, match="does not match") as info:
        PlaintextPrimaryKeyKms(wrong).unwrap(as_read)
    assert as_read.reference in str(info.value)
    assert DATA_KEY_STRING not in str(info.value) and PRIMARY.hex() not in str(info.value)
    # With our own wrapped key, the fingerprint says so before any decryption.
    with pytest.raises(KeyAccessError, match="another primary key"):
        PlaintextPrimaryKeyKms(wrong).unwrap(wrapped)


@HYPO
@given(wrong=st.binary(min_size=16, max_size=16).filter(lambda k: k != PRIMARY))
def test_plaintext_wrong_primary_key_property(wrong):
    wrapped = WrappedKey("bigdl", "", "", ecb_wrap_by_hand(PRIMARY, base64.b64encode(bytes(32)).decode()))
    with pytest.raises(KeyAccessError):
        PlaintextPrimaryKeyKms(wrong).unwrap(wrapped)


@pytest.mark.parametrize("wrapped", [b"@@@notbase64@@@", base64.b64encode(b"short"), base64.b64encode(b"x" * 17)])
def test_plaintext_malformed_wrapped_key(wrapped):
    with pytest.raises(KeyAccessError):
        PlaintextPrimaryKeyKms(PRIMARY).unwrap(WrappedKey("bigdl", "", "", wrapped))


def test_plaintext_supports_and_refuses_other_kms():
    kms = PlaintextPrimaryKeyKms(PRIMARY)
    assert kms.supports(WrappedKey("bigdl", "", "", b"x"))
    assert kms.supports(WrappedKey("bigdl-plaintext", "", "", b"x"))
    assert not kms.supports(WrappedKey("local", "default", "1", b"x"))
    with pytest.raises(KeyAccessError):
        kms.unwrap(WrappedKey("local", "default", "1", b"x"))


def test_plaintext_wrap_needs_an_ascii_key_string():
    with pytest.raises(ValueError, match="ASCII"):
        PlaintextPrimaryKeyKms(PRIMARY).wrap(DataKey(b"\x00\xffbinary key"), "k")


def test_plaintext_never_exposes_the_primary_key():
    kms = PlaintextPrimaryKeyKms(PRIMARY)
    for text in (repr(kms), str(kms), repr(kms.describe_key("x").to_json())):
        for form in (PRIMARY.hex(), base64.b64encode(PRIMARY).decode(), repr(PRIMARY)):
            assert form not in text
    assert "redacted" in repr(kms)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(kms)
    with pytest.raises(TypeError):
        copy.copy(kms)


def test_plaintext_end_to_end_with_the_format():
    kms = PlaintextPrimaryKeyKms(os.urandom(32))
    key, wrapped = kms.generate_data_key("default")
    fmt = BigdlCbcFormat()
    raw = io.BytesIO()
    with fmt.open_writer(raw, key, [wrapped], name="p.csv.cbc") as writer:
        writer.write(b"a,b\n1,2\n")
    info = fmt.describe(raw, name="p.csv.cbc")
    assert info.envelope[0].kms == "bigdl" and info.envelope[0].wrapped == wrapped.wrapped
    unwrapped = kms.unwrap(info.envelope[0])
    assert fmt.open_reader(raw, unwrapped, name="p.csv.cbc").read() == b"a,b\n1,2\n"


# --- SimpleKms --------------------------------------------------------------------------------------------

def test_simple_refused_without_the_insecure_flag():
    for allow in (False, None, 1, "yes"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ConfigError) as info:
                SimpleKms(primary_key="1234567890123456", allow_insecure=allow)
        assert "--insecure-simple-kms" in info.value.hint
        assert "1234567890123456" not in str(info.value)
    with pytest.raises(ConfigError):
        open_kms("SimpleKeyManagementService", primary_key="1234567890123456")


def test_simple_warns_on_every_use():
    with pytest.warns(PpmlInsecureWarning, match="no confidentiality"):
        kms = SimpleKms(primary_key="1234567890123456", allow_insecure=True)
    with pytest.warns(PpmlInsecureWarning):
        key, wrapped = kms.generate_data_key("x")
    with pytest.warns(PpmlInsecureWarning):
        kms.wrap(key, "x")
    for _ in range(2):
        with pytest.warns(PpmlInsecureWarning):
            kms.unwrap(wrapped)


@pytest.mark.parametrize(("pk", "data", "encrypted"), [
    ("1234567890123456", "5029384756102938", "6253841546225384"),
    ("9999999999999999", "1111111111111111", "0000000000000000"),
    ("0000000000000000", "0123456789012345", "0123456789012345"),
    ("1234567890120007", "9999999999999999", "0123456789019996"),
])
def test_simple_known_answers(pk, data, encrypted):
    kms = simple(primary_key=pk)
    with pytest.warns(PpmlInsecureWarning):
        wrapped = kms.wrap(DataKey(data.encode()), "k")
    assert wrapped.wrapped == encrypted.encode()
    assert (wrapped.kms, wrapped.key) == ("SimpleKeyManagementService", kms.fingerprint)
    with pytest.warns(PpmlInsecureWarning):
        assert kms.unwrap(WrappedKey("bigdl", "", "", encrypted.encode())).unsafe_material() == data.encode()


@HYPO
@given(pk=st.text("0123456789", min_size=16, max_size=16), data=st.text("0123456789", min_size=16, max_size=16))
def test_simple_round_trip_property(pk, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PpmlInsecureWarning)
        kms = SimpleKms(primary_key=pk, allow_insecure=True)
        wrapped = kms.wrap(DataKey(data.encode()), "k")
        assert wrapped.wrapped.isdigit() and len(wrapped.wrapped) == 16
        assert kms.unwrap(wrapped).unsafe_material() == data.encode()


def test_simple_generate_data_key():
    kms = simple(primary_key="1234567890123456")
    with pytest.warns(PpmlInsecureWarning):
        key, wrapped = kms.generate_data_key("k")
    assert key.unsafe_material().isdigit() and len(key) == 16
    with pytest.warns(PpmlInsecureWarning):
        assert kms.unwrap(wrapped) == key


@pytest.mark.parametrize(("content", "ok"), [
    ("1234567890123456\n", True),
    ("1234567890123456", True),
    ("1234567890123456\r\n", True),
    ("123456789012345\n", False),
    ("12345678901234567\n", False),
    ("12345678901234a6\n", False),
    ("1234567890123456\n1234567890123456\n", False),
    ("\n", False),
    (" 1234567890123456\n", False),
])
def test_simple_primary_key_file(tmp_path, content, ok):
    path = tmp_path / "primary-key"
    path.write_bytes(content.encode())
    if ok:
        assert simple(primary_key_file=path).fingerprint == simple(primary_key="1234567890123456").fingerprint
    else:
        with pytest.raises(ConfigError) as info:
            SimpleKms(primary_key_file=path, allow_insecure=True)
        assert str(path) in str(info.value) and "1234567890123456" not in str(info.value)


def test_simple_primary_key_file_errors(tmp_path):
    with pytest.raises(NotFoundError):
        SimpleKms(primary_key_file=tmp_path / "missing", allow_insecure=True)
    (tmp_path / "bin").write_bytes(b"\xff" * 16)
    with pytest.raises(ConfigError):
        SimpleKms(primary_key_file=tmp_path / "bin", allow_insecure=True)
    with pytest.raises(ConfigError, match="exactly one"):
        SimpleKms(allow_insecure=True)
    with pytest.raises(ConfigError, match="exactly one"):
        SimpleKms(primary_key_file=tmp_path / "bin", primary_key="1234567890123456", allow_insecure=True)
    for bad in ("123", "abcdefghijklmnop", "1234567890123456 ", "١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦"):
        with pytest.raises(ConfigError, match="16 decimal digits"):
            SimpleKms(primary_key=bad, allow_insecure=True)


def test_simple_malformed_wrapped_and_data_keys():
    kms = simple(primary_key="1234567890123456")
    for bad in (b"123", b"12345678901234567", b"abcdefghijklmnop", b"12345678901234\xff\xfe"):
        with pytest.warns(PpmlInsecureWarning), pytest.raises(KeyAccessError, match="16 decimal digits"):
            kms.unwrap(WrappedKey("bigdl", "", "", bad))
    with pytest.warns(PpmlInsecureWarning), pytest.raises(ValueError, match="16 decimal digits"):
        kms.wrap(DataKey(base64.b64encode(os.urandom(32))), "k")
    other = simple(primary_key="6543210987654321")
    with pytest.warns(PpmlInsecureWarning):
        _, wrapped = other.generate_data_key("k")
    with pytest.warns(PpmlInsecureWarning), pytest.raises(KeyAccessError, match="another primary key"):
        kms.unwrap(wrapped)
    assert not kms.supports(WrappedKey("bigdl-plaintext", "", "", b"x"))
    assert kms.supports(WrappedKey("bigdl", "", "", b"x"))
    with pytest.warns(PpmlInsecureWarning), pytest.raises(KeyAccessError):
        kms.unwrap(WrappedKey("local", "", "", b"1234567890123456"))


def test_simple_never_exposes_keys():
    kms = simple(primary_key="1234567890123456")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        key, wrapped = kms.generate_data_key("k")
        kms.unwrap(wrapped)
    secrets_ = ("1234567890123456", key.unsafe_material().decode())
    for text in (repr(kms), str(kms), *(str(w.message) for w in caught), repr(kms.describe_key("k").to_json())):
        assert not any(s in text for s in secrets_)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(kms)


def test_simple_wrong_primary_key_fails_at_the_file_hmac():
    """SimpleKMS cannot tell a wrong primary key; the file's HMAC does (BigDL-read key strings carry no id)."""
    right, wrong = simple(primary_key="1234567890123456"), simple(primary_key="1234567890120000")
    with pytest.warns(PpmlInsecureWarning):
        key, wrapped = right.generate_data_key("k")
    fmt = BigdlCbcFormat()
    raw = io.BytesIO()
    with fmt.open_writer(raw, key, [wrapped], name="s.csv.cbc") as writer:
        writer.write(b"x,y\n")
    as_read = fmt.describe(raw, name="s.csv.cbc").envelope[0]
    with pytest.warns(PpmlInsecureWarning):
        bad = wrong.unwrap(as_read)
    with pytest.raises(IntegrityError, match="s.csv.cbc"):
        fmt.open_reader(raw, bad, name="s.csv.cbc")
