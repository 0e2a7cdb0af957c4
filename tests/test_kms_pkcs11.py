"""The ``pkcs11`` backend on SoftHSM2: what the contract suite does not cover.

The key's material cannot be read, so interoperability with RFC 5649 is checked with a test-only key created
extractable on purpose (which the backend warns about on every use).
"""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from softhsm import pkcs11_kms, pkcs11_settings, softhsm, softhsm_token  # noqa: F401  (fixtures)

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import AlreadyExistsError, ConfigError, KeyAccessError, NotFoundError, PpmlInsecureWarning, UsageError
from ppml.keys.keyring import KeyRing, clear_cache
from ppml.keys.kms import kms_class, open_kms

pkcs11 = pytest.importorskip("pkcs11")
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass  # noqa: E402
from pkcs11 import exceptions as p11e  # noqa: E402

from ppml.keys.pkcs11 import Pkcs11Kms, refresh_tokens  # noqa: E402


def _primary(session, name="default", version=b"1"):
    (key,) = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: name,
                                  Attribute.ID: version})
    return key


def test_registered_as_pkcs11():
    assert kms_class("pkcs11") is Pkcs11Kms and kms_class("PKCS11") is Pkcs11Kms


def test_primary_key_cannot_leave_the_token(pkcs11_kms):
    with pkcs11_kms._session() as session:
        key = _primary(session)
        attrs = key.get_attributes([Attribute.TOKEN, Attribute.PRIVATE, Attribute.SENSITIVE, Attribute.EXTRACTABLE,
                                    Attribute.ALWAYS_SENSITIVE, Attribute.NEVER_EXTRACTABLE, Attribute.WRAP,
                                    Attribute.UNWRAP, Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.VALUE_LEN])
        assert attrs == {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                         Attribute.EXTRACTABLE: False, Attribute.ALWAYS_SENSITIVE: True,
                         Attribute.NEVER_EXTRACTABLE: True, Attribute.WRAP: True, Attribute.UNWRAP: True,
                         Attribute.ENCRYPT: False, Attribute.DECRYPT: False, Attribute.VALUE_LEN: 32}
        assert key.key_type == KeyType.AES
        with pytest.raises(p11e.AttributeSensitive):
            key[Attribute.VALUE]
        # Neither can it be wrapped out by another key, nor be made extractable afterwards.
        other = session.generate_key(KeyType.AES, 256, capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP)
        with pytest.raises(p11e.KeyUnextractable):
            other.wrap_key(key)
        with pytest.raises(p11e.PKCS11Error):
            key[Attribute.EXTRACTABLE] = True
        other.destroy()


def test_rotation_keeps_old_versions_unwrapping(pkcs11_kms, softhsm_token):
    pairs = [pkcs11_kms.generate_data_key("default")]
    for expected in ("2", "3"):
        assert pkcs11_kms.rotate_key("default").current_version == expected
        pairs.append(pkcs11_kms.generate_data_key("default"))
    assert [w.version for _, w in pairs] == ["1", "2", "3"]
    info = pkcs11_kms.describe_key("default")
    assert [(v.version, v.state) for v in info.versions] == [("1", "enabled"), ("2", "enabled"), ("3", "enabled")]
    assert info.details["token"] == softhsm_token.label
    refresh_tokens(softhsm_token.hsm.module)  # token objects outlive a new initialization and login
    fresh = softhsm_token.kms()
    for key, wrapped in pairs:
        assert fresh.unwrap(wrapped) == key
        assert wrapped.key == f"{softhsm_token.label}/default"


def test_retire_destroys_the_version_and_says_so(pkcs11_kms):
    _, v1 = pkcs11_kms.generate_data_key("default")
    with pytest.raises(UsageError, match="current version"):
        pkcs11_kms.retire_version("default", "1")
    pkcs11_kms.rotate_key("default")
    info = pkcs11_kms.retire_version("default", "1")
    assert [(v.version, v.state) for v in info.versions] == [("1", "retired"), ("2", "enabled")]
    with pytest.raises(KeyAccessError, match="retired"):
        pkcs11_kms.unwrap(v1)
    assert pkcs11_kms.rotate_key("default").current_version == "3"  # a retired number is never reused
    with pytest.raises(NotFoundError, match="versions: 2, 3"):
        pkcs11_kms.retire_version("default", "1")


def test_create_list_and_names(pkcs11_kms):
    with pytest.raises(AlreadyExistsError, match="rotate"):
        pkcs11_kms.create_key("default")
    with pytest.raises(UsageError, match="invalid key name"):
        pkcs11_kms.create_key("a/b")
    pkcs11_kms.create_key("second")
    assert [(k.name, k.current_version) for k in pkcs11_kms.list_keys()] == [("default", "1"), ("second", "1")]
    with pytest.raises(NotFoundError, match="default, second"):
        pkcs11_kms.describe_key("third")


@pytest.mark.parametrize("damage", ["flip-last", "flip-first-block", "format-byte", "truncate", "extend"])
def test_tampered_wrapped_key_is_refused(pkcs11_kms, softhsm_token, damage):
    key, wrapped = pkcs11_kms.generate_data_key("default")
    blob = bytearray(wrapped.wrapped)
    if damage == "flip-last":
        blob[-1] ^= 0x01
    elif damage == "flip-first-block":
        blob[3] ^= 0x80
    elif damage == "format-byte":
        blob[0] = 0x02
    elif damage == "truncate":
        del blob[-8:]
    else:
        blob += bytes(8)
    with pytest.raises(KeyAccessError) as info:
        pkcs11_kms.unwrap(WrappedKey(wrapped.kms, wrapped.key, wrapped.version, bytes(blob)))
    text = str(info.value)
    assert "default#v1" in text and softhsm_token.label in text
    assert key.unsafe_material().hex() not in text and softhsm_token.pin not in text


def test_wrong_pin_is_refused_without_showing_it(softhsm_token, tmp_path):
    bad = tmp_path / "bad.pin"
    bad.write_text("not-the-pin")
    with pytest.raises(KeyAccessError, match="wrong PIN") as info:
        softhsm_token.kms(pin=f"file:{bad}").create_key("default")
    assert "not-the-pin" not in str(info.value) and softhsm_token.pin not in str(info.value)
    assert str(bad) in str(info.value)  # the source is named, never the value
    good = softhsm_token.kms()
    good.create_key("default")
    # The token is now logged in for the whole process; a wrong PIN must still not get through.
    with pytest.raises(KeyAccessError, match="wrong PIN"):
        softhsm_token.kms(pin=f"file:{bad}").generate_data_key("default")
    assert softhsm_token.kms(pin=lambda: softhsm_token.pin).generate_data_key("default")


def test_pin_sources(softhsm_token, monkeypatch):
    monkeypatch.delenv("PPML_PKCS11_PIN", raising=False)
    with pytest.raises(ConfigError, match="PPML_PKCS11_PIN"):
        softhsm_token.kms(pin=None).list_keys()
    with pytest.raises(UsageError, match="env:VAR"):
        softhsm_token.kms(pin=softhsm_token.pin).list_keys()  # a literal PIN would end up in configs and logs
    monkeypatch.setenv("PPML_PKCS11_PIN", softhsm_token.pin)
    assert softhsm_token.kms(pin=None).list_keys() == []


def test_unknown_token_lists_the_tokens(softhsm_token):
    with pytest.raises(NotFoundError) as info:
        softhsm_token.kms(token="no-such-token").list_keys()
    assert "no-such-token" in info.value.message and repr(softhsm_token.label) in info.value.hint


def test_missing_module_says_how_to_install(softhsm_token):
    with pytest.raises(ConfigError, match="does not exist") as info:
        softhsm_token.kms(module="/nonexistent/libsofthsm2.so").list_keys()
    assert "apt-get install softhsm2" in info.value.hint and "PPML_PKCS11_MODULE" in info.value.hint


def test_key_from_another_token_is_refused(softhsm, pkcs11_kms):
    other = softhsm.init_token().kms()
    other.create_key("default")
    _, wrapped = pkcs11_kms.generate_data_key("default")
    with pytest.raises(KeyAccessError, match=f"token {pkcs11_kms.token!r}"):
        other.unwrap(wrapped)
    # Relabelling the envelope as the other token's does not help: its key is another key.
    forged = WrappedKey(wrapped.kms, other.key_identifier("default"), wrapped.version, wrapped.wrapped)
    with pytest.raises(KeyAccessError, match="could not unwrap"):
        other.unwrap(forged)


def test_output_is_rfc5649_as_pyca_computes_it(pkcs11_kms):
    keywrap = pytest.importorskip("cryptography.hazmat.primitives.keywrap")
    with pkcs11_kms._session() as session:
        test_only = session.generate_key(
            KeyType.AES, 256, label="interop", id=b"1", store=True,
            capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
            template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True})
        material = test_only[Attribute.VALUE]
    key = DataKey.generate()
    with pytest.warns(PpmlInsecureWarning, match="can be read out"):
        wrapped = pkcs11_kms.wrap(key, "interop")
    assert wrapped.wrapped[:1] == b"\x01" and len(wrapped.wrapped) == 1 + 40
    assert wrapped.wrapped[1:] == keywrap.aes_key_wrap_with_padding(material, key.unsafe_material())
    assert keywrap.aes_key_unwrap_with_padding(material, wrapped.wrapped[1:]) == key.unsafe_material()
    other = DataKey.generate()
    from_pyca = WrappedKey("pkcs11", wrapped.key, "1", b"\x01" + keywrap.aes_key_wrap_with_padding(
        material, other.unsafe_material()))
    assert pkcs11_kms.unwrap(from_pyca) == other


def test_data_key_length_must_be_a_multiple_of_8(pkcs11_kms):
    with pytest.raises(ValueError, match="multiple of 8"):
        pkcs11_kms.wrap(DataKey(b"x" * 44), "default")
    longer = DataKey(b"y" * 48)
    assert pkcs11_kms.unwrap(pkcs11_kms.wrap(longer, "default")) == longer


def test_concurrent_wrap_unwrap_from_8_threads(pkcs11_kms, softhsm_token):
    start = threading.Barrier(8)

    def work(index: int) -> int:
        start.wait()
        for round_ in range(25):
            key, wrapped = pkcs11_kms.generate_data_key("default")
            assert pkcs11_kms.unwrap(wrapped) == key
            if index == 0 and round_ == 10:
                refresh_tokens(softhsm_token.hsm.module)  # a re-initialization waits for calls in progress
        return index

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(work, range(8))) == list(range(8))


def test_round_trip_through_the_key_ring(pkcs11_kms, pkcs11_settings):
    key, wrapped = pkcs11_kms.generate_data_key("default")
    envelope = [WrappedKey("nowhere", "k", "1", b"\x00" * 40), wrapped]
    assert KeyRing([pkcs11_kms]).unwrap(envelope, name="f.ppml", key_id=key.key_id) == key
    clear_cache()
    # Settings travel (a PIN source, never a PIN): a pickled backend opens the token in the receiving process.
    copy = pickle.loads(pickle.dumps(open_kms("pkcs11", **pkcs11_settings)))
    assert KeyRing([copy]).unwrap([wrapped], name="f.ppml", key_id=key.key_id) == key
    with pytest.raises(TypeError, match="callable"):
        pickle.dumps(Pkcs11Kms(pkcs11_settings["token"], pin=lambda: "x"))


def test_cli_keys_and_files_with_an_hsm_key(softhsm_token, tmp_path, monkeypatch, capsys):
    """`--kms pkcs11` through the command line: the token from $PPML_PKCS11_TOKEN, the PIN from $PPML_PKCS11_PIN."""
    import json

    from ppml.cli.main import main

    clear_cache()
    monkeypatch.setenv("PPML_PKCS11_TOKEN", softhsm_token.label)
    monkeypatch.setenv("PPML_PKCS11_PIN", softhsm_token.pin)
    monkeypatch.setenv("PPML_PKCS11_MODULE", softhsm_token.settings["module"])
    assert main(["keys", "init", "--kms", "pkcs11", "--key-name", "tpch"]) == 0
    assert main(["keys", "data-key", "--kms", "pkcs11", "--key-name", "tpch", "--out", str(tmp_path / "dk.json")]) == 0
    (tmp_path / "a.txt").write_bytes(b"hsm protected\n")
    assert main(["encrypt", str(tmp_path / "a.txt"), str(tmp_path / "a.ppml"), "--data-key", str(tmp_path / "dk.json")]) == 0
    clear_cache()
    assert main(["decrypt", str(tmp_path / "a.ppml"), str(tmp_path / "b.txt")]) == 0
    assert (tmp_path / "b.txt").read_bytes() == b"hsm protected\n"
    capsys.readouterr()
    assert main(["keys", "list", "--kms", "pkcs11", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["token"] == softhsm_token.label and listed["keys"][0]["name"] == "tpch"
    # Rotation, re-wrapping, retiring and re-keying work with the HSM as with any primary KMS.
    hsm = ["--kms", "pkcs11", "--key-name", "tpch"]
    assert main(["keys", "rotate", *hsm]) == 0
    assert main(["keys", "retire", "1", *hsm, "--scan", str(tmp_path), "--confirm", "tpch"]) == 7  # still in use
    assert main(["rewrap", str(tmp_path), *hsm]) == 0
    assert main(["keys", "retire", "1", *hsm, "--scan", str(tmp_path), "--confirm", "tpch"]) == 0
    capsys.readouterr()
    assert main(["rekey", str(tmp_path / "a.ppml"), *hsm, "--out-data-key", str(tmp_path / "dk2.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == 1
    assert json.loads((tmp_path / "dk2.json").read_text())["envelope"][0]["version"] == "2"
    clear_cache()
    assert main(["decrypt", str(tmp_path / "a.ppml"), str(tmp_path / "d.txt")]) == 0
    assert (tmp_path / "d.txt").read_bytes() == b"hsm protected\n"
    monkeypatch.delenv("PPML_PKCS11_TOKEN")
    clear_cache()
    assert main(["decrypt", str(tmp_path / "a.ppml"), str(tmp_path / "c.txt")]) == 5
    assert main(["keys", "list", "--kms", "pkcs11"]) == 2
    assert "PPML_PKCS11_TOKEN" in capsys.readouterr().err
