"""ppml.io.rotation and key-version retirement: rewrap, rekey, key_usage, retire_version."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from keystores import make_keystore

from ppml.crypto import gcm_stream
from ppml.errors import KeyAccessError, NotFoundError, UsageError, WrongKeyError
from ppml.io import files, rotation
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.keyring import KeyRing, clear_cache
from ppml.keys.local import LocalKms

SEG = 4096


def header_of(path: Path) -> gcm_stream.StreamHeader:
    with open(path, "rb") as raw:
        return gcm_stream.read_header(raw, name=str(path))


def body_of(path: Path) -> bytes:
    return path.read_bytes()[header_of(path).body_offset:]


def references(path: Path) -> list[str]:
    return [w.reference for w in header_of(path).envelope]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".ppml-partial-" in p.name or ".ppml-old-" in p.name)


def decrypt_bytes(path: Path, kms: LocalKms) -> bytes:
    clear_cache()  # prove the header's envelope opens, not a cached key
    with files.open_decrypted(str(path), keyring=KeyRing([kms])) as handle:
        return handle.read()


@pytest.fixture
def tree_encrypted(tmp_path, tree_kms, tree_plain):
    """``tmp_path/tree``: the data set ``enc/`` (the plain tree encrypted under one data key, v1, with its
    manifest) and its data-key file ``keys/dk.json`` beside it. Returns ``(enc, visible, key, record)``."""
    root, visible = tree_plain
    key, wrapped = tree_kms.generate_data_key("default")
    record = DataKeyFile.new(key.key_id, (wrapped,))
    enc = tmp_path / "tree" / "enc"
    files.encrypt(str(root), str(enc), key=key, envelope=record.envelope, segment_size=SEG)
    record.save(enc.parent / "keys" / "dk.json")
    return enc, visible, key, record


# Keyed files of the tree: the data files, the data-key file and the data set's manifest.
def keyed_count(visible) -> int:
    return len(visible) + 2


def test_rewrap_rewrites_headers_in_place_and_data_key_files(tree_kms, tree_encrypted):
    enc, visible, key, record = tree_encrypted
    data_files = sorted(enc.rglob("*.ppml"))
    before = {p: (p.read_bytes(), header_of(p), os.stat(p).st_ino) for p in data_files}
    assert dict(rotation.key_usage(rotation.scan(str(enc.parent)))) == {"local:default#v1": keyed_count(visible)}

    tree_kms.rotate_key("default")
    report = rotation.rewrap(str(enc.parent), keyring=KeyRing([tree_kms]), backend=tree_kms, key_name="default",
                             workers=2)

    assert {d["status"] for d in report.details} == {"rewrapped"} and report.files == keyed_count(visible)
    assert {d["kind"] for d in report.details} == {"aes_gcm_stream", "data-key", "manifest"}
    assert files.verify(str(enc), keyring=KeyRing([tree_kms])).dataset["version"] == 2  # the manifest moved too
    for path, (old_bytes, old_header, inode) in before.items():
        new_header = header_of(path)
        assert references(path) == ["local:default#v2"]
        assert os.stat(path).st_ino == inode  # rewritten in place, not replaced
        assert path.stat().st_size == len(old_bytes)
        assert new_header.authenticated == old_header.authenticated
        assert path.read_bytes()[new_header.body_offset:] == old_bytes[old_header.body_offset:]
        assert decrypt_bytes(path, tree_kms) == visible[path.relative_to(enc).as_posix()[: -len(".ppml")]]

    dk_path = enc.parent / "keys" / "dk.json"
    rewrapped = DataKeyFile.load(dk_path)  # also refuses a file others can read
    assert rewrapped.key_id == record.key_id and rewrapped.created == record.created
    assert [w.reference for w in rewrapped.envelope] == ["local:default#v2"]
    assert rewrapped.envelope[0].wrapped != record.envelope[0].wrapped
    assert stat.S_IMODE(dk_path.stat().st_mode) == 0o600
    clear_cache()
    assert KeyRing([tree_kms]).open_data_key_file(str(dk_path))[1] == key

    assert dict(rotation.key_usage(rotation.scan(str(enc.parent)))) == {"local:default#v2": keyed_count(visible)}
    assert leftovers(enc.parent) == []


def _tiny_capacity_file(tmp_path: Path, kms: LocalKms) -> tuple[Path, bytes]:
    """A valid file whose envelope area is exactly as large as its envelope (no room to grow)."""
    plain = os.urandom(2 * SEG + 77)
    (tmp_path / "x.bin").write_bytes(plain)
    key, wrapped = kms.generate_data_key("default")
    files.encrypt(str(tmp_path / "x.bin"), str(tmp_path / "roomy.ppml"), key=key, envelope=(wrapped,),
                  segment_size=SEG)
    header = header_of(tmp_path / "roomy.ppml")
    roomy = gcm_stream.encode_header(header.authenticated, header.envelope, capacity=4096)
    payload_size = len(roomy.rstrip(b" ")) - gcm_stream.ENVELOPE_OFFSET
    tight = gcm_stream.encode_header(header.authenticated, header.envelope, capacity=payload_size)
    (tmp_path / "tree").mkdir()
    path = tmp_path / "tree" / "x.bin.ppml"
    path.write_bytes(tight + body_of(tmp_path / "roomy.ppml"))
    assert header_of(path).envelope_capacity == payload_size
    assert decrypt_bytes(path, kms) == plain
    return path, plain



def test_rewrap_rewrites_the_file_when_the_envelope_does_not_fit(tmp_path, tree_kms):
    path, plain = _tiny_capacity_file(tmp_path, tree_kms)
    body = body_of(path)
    capacity = header_of(path).envelope_capacity
    tree_kms.create_key("backup")

    report = rotation.rewrap(str(tmp_path / "tree"), keyring=KeyRing([tree_kms]), backend=tree_kms,
                             key_name="backup")
    assert [d["status"] for d in report.details] == ["rewrapped"]
    assert references(path) == ["local:default#v1", "local:backup#v1"]  # a second copy: envelope grew
    assert header_of(path).envelope_capacity > capacity
    assert body_of(path) == body
    assert decrypt_bytes(path, tree_kms) == plain
    assert leftovers(tmp_path) == []


def test_adding_copies_until_the_area_overflows_keeps_the_file_readable(tmp_path, tree_kms, tree_encrypted):
    enc, visible, _, _ = tree_encrypted
    path = enc / "top.csv.ppml"
    body, start = body_of(path), header_of(path).body_offset
    ring = KeyRing([tree_kms])
    names = [f"copy{i}" for i in range(8)]
    for name in names:
        tree_kms.create_key(name)
        rotation.rewrap(str(path), keyring=ring, backend=tree_kms, key_name=name)
    assert references(path) == ["local:default#v1", *(f"local:{n}#v1" for n in names)]
    assert header_of(path).body_offset > start  # the header had to be rewritten at least once
    assert body_of(path) == body
    assert decrypt_bytes(path, tree_kms) == visible["top.csv"]


def test_remove_drops_copies(tmp_path, tree_kms, tree_encrypted):
    enc, visible, _, _ = tree_encrypted
    tree_kms.create_key("backup")
    ring = KeyRing([tree_kms])
    tree = str(enc.parent)
    rotation.rewrap(tree, keyring=ring, backend=tree_kms, key_name="backup")
    path = enc / "a" / "mid.txt.ppml"
    assert references(path) == ["local:default#v1", "local:backup#v1"]
    assert DataKeyFile.load(enc.parent / "keys" / "dk.json").envelope[1].reference == "local:backup#v1"

    tree_kms.rotate_key("default")
    rotation.rewrap(tree, keyring=ring, backend=tree_kms, key_name="default", remove=["local:backup"])
    assert references(path) == ["local:default#v2"]
    assert [w.reference for w in DataKeyFile.load(enc.parent / "keys" / "dk.json").envelope] == ["local:default#v2"]

    rotation.rewrap(tree, keyring=ring, backend=tree_kms, key_name="backup")
    rotation.rewrap(tree, keyring=ring, backend=tree_kms, key_name="backup", remove=["local:default#v2"])
    assert references(path) == ["local:backup#v1"]
    assert dict(rotation.key_usage(rotation.scan(tree))) == {"local:backup#v1": keyed_count(visible)}
    assert decrypt_bytes(path, tree_kms) == visible["a/mid.txt"]


def test_rewrap_reports_files_it_cannot_open_and_rewraps_the_rest(tmp_path, tree_kms, tree_encrypted):
    enc, visible, _, _ = tree_encrypted
    foreign = make_keystore(tmp_path / "other.json", "pw", "default")
    key, wrapped = foreign.generate_data_key("default")
    files.encrypt(str(tmp_path / "plain" / "top.csv"), str(enc.parent / "foreign.ppml"), key=key, envelope=(wrapped,))
    tree_kms.rotate_key("default")
    clear_cache()

    report = rotation.rewrap(str(enc.parent), keyring=KeyRing([tree_kms]), backend=tree_kms, key_name="default")
    status = {Path(d["path"]).name: d for d in report.details}
    assert status["foreign.ppml"]["status"] == "failed"
    assert status["foreign.ppml"]["error"]["code"] == "key-access"
    assert report.files == keyed_count(visible)
    assert references(enc.parent / "foreign.ppml") == ["local:default#v1"]  # untouched


def test_rotation_leaves_a_changed_data_set_alone(tmp_path, tree_kms, tree_encrypted):
    """A file slipped into a data set (even one the key store can open) makes rewrap and rekey refuse it whole:
    rotation must never write a manifest that vouches for the intruder."""
    enc, visible, key, record = tree_encrypted
    files.encrypt(str(tmp_path / "plain" / "top.csv"), str(enc / "intruder.ppml"), key=key, envelope=record.envelope)
    before = {p: p.read_bytes() for p in enc.rglob("*") if p.is_file()}
    tree_kms.rotate_key("default")
    ring = KeyRing([tree_kms])

    rewrapped = rotation.rewrap(str(enc), keyring=ring, backend=tree_kms, key_name="default")
    new_key, wrapped = tree_kms.generate_data_key("default")
    rekeyed = rotation.rekey(str(enc), keyring=ring, key=new_key, envelope=(wrapped,))
    for report in (rewrapped, rekeyed):
        assert report.files == 0 and {d["status"] for d in report.details} == {"failed"}
        assert {d["error"]["code"] for d in report.details} == {"integrity"}
        assert "intruder.ppml" in report.details[0]["error"]["message"]
    assert {p: p.read_bytes() for p in enc.rglob("*") if p.is_file()} == before


def test_rekey_encrypts_again_under_a_new_data_key(tmp_path, tree_kms, tree_encrypted):
    enc, visible, old_key, record = tree_encrypted
    new_key, wrapped = tree_kms.generate_data_key("default")
    ids = {p: header_of(p).file_id for p in enc.rglob("*.ppml")}
    dk_before = (enc.parent / "keys" / "dk.json").read_bytes()

    report = rotation.rekey(str(enc.parent), keyring=KeyRing([tree_kms]), key=new_key, envelope=(wrapped,),
                            workers=2)
    assert report.files == len(visible) and report.bytes == sum(map(len, visible.values()))
    assert (enc.parent / "keys" / "dk.json").read_bytes() == dk_before  # data-key files are not data
    checked = files.verify(str(enc), key=new_key)  # a new manifest version, under the new data key
    assert checked.dataset["version"] == 2 and not checked.failures
    for path, file_id in ids.items():
        assert header_of(path).file_id != file_id
        assert header_of(path).segment_size == SEG
        with pytest.raises(WrongKeyError):
            with files.open_decrypted(str(path), key=old_key):
                pass
        with files.open_decrypted(str(path), key=new_key) as handle:
            assert handle.read() == visible[path.relative_to(enc).as_posix()[: -len(".ppml")]]
    assert leftovers(enc.parent) == []


def test_retired_version_can_no_longer_unwrap(tmp_path, tree_kms):
    key, wrapped_v1 = tree_kms.generate_data_key("default")
    tree_kms.rotate_key("default")
    _, wrapped_v2 = tree_kms.generate_data_key("default")

    with pytest.raises(UsageError, match="current version"):
        tree_kms.retire_version("default", "2")
    with pytest.raises(NotFoundError):
        tree_kms.retire_version("default", "7")
    assert tree_kms.unwrap(wrapped_v1) == key  # still fine before retirement

    info = tree_kms.retire_version("default", "1")
    assert {v.version: v.state for v in info.versions} == {"1": "retired", "2": "enabled"}
    with pytest.raises(KeyAccessError, match="local:default#v1"):
        tree_kms.unwrap(wrapped_v1)

    reopened = LocalKms(tree_kms.path, "pw")  # the retirement is persisted: material destroyed on disk
    assert "material" not in json.loads(tree_kms.path.read_text())["keys"]["default"]["versions"]["1"]
    with pytest.raises(KeyAccessError, match="local:default#v1"):
        reopened.unwrap(wrapped_v1)
    clear_cache()
    with pytest.raises(KeyAccessError, match="local:default#v1"):
        KeyRing([reopened]).unwrap((wrapped_v1,), name="x.ppml")
    reopened.unwrap(wrapped_v2)
