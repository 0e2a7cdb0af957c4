"""Data-set manifests: every attack on a folder of encrypted files that per-file authentication cannot see.

The attacker can write to storage but holds no key: they delete, add, rename, duplicate, truncate or swap
files (also for older files encrypted under the same data key), edit or copy manifests, and delete the
newest manifests to roll a data set back. Each attack is run through the library and the command line
(exit code 4, the member named, no output left behind).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import Cli, write_plain

from ppml.crypto.manifest import Manifest, Member
from ppml.errors import AlreadyExistsError, CorruptHeaderError, IntegrityError, UnprotectedDataWarning
from ppml.io import files
from ppml.io.datasets import MANIFEST_FOLDER, latest_version, write_version
from ppml.io.storage import locate
from ppml.keys.keyring import KeyRing


@pytest.fixture
def data_set(tmp_path, tree_kms, tree_plain):
    """``enc/``: the plain tree encrypted (a data set at version 1) and the means to attack and read it."""
    root, visible = tree_plain
    key, wrapped = tree_kms.generate_data_key("default")
    enc = tmp_path / "enc"
    report = files.encrypt(str(root), str(enc), key=key, envelope=(wrapped,), segment_size=4096)
    assert report.dataset["version"] == 1 and report.dataset["members"] == len(visible)
    return {"enc": enc, "plain": root, "visible": visible, "key": key, "wrapped": wrapped,
            "ring": KeyRing([tree_kms]), "tmp": tmp_path}


def _refused(ds, *names: str) -> str:
    """Verify and decrypt both refuse the folder, naming each of ``names``; returns the message."""
    report = files.verify(str(ds["enc"]), keyring=ds["ring"])
    failed = report.failures
    assert failed and failed[0].get("kind") == "data set", failed
    message = failed[0]["error"]["message"]
    assert failed[0]["error"]["code"] == "integrity"
    with pytest.raises(IntegrityError) as info:
        files.decrypt(str(ds["enc"]), str(ds["tmp"] / "out"), keyring=ds["ring"])
    assert not (ds["tmp"] / "out").exists()
    for name in names:
        assert name in message and name in str(info.value)
    return message


def test_an_untouched_data_set_verifies_and_reads(data_set):
    report = files.verify(str(data_set["enc"]), keyring=data_set["ring"])
    assert not report.failures and report.dataset["version"] == 1
    files.decrypt(str(data_set["enc"]), str(data_set["tmp"] / "out"), keyring=data_set["ring"])
    assert (data_set["tmp"] / "out" / "top.csv").read_bytes() == data_set["visible"]["top.csv"]


def test_a_plaintext_file_in_place_of_a_deleted_part_is_refused(data_set):
    enc = data_set["enc"]
    (enc / "top.csv.ppml").unlink()
    (enc / "top.csv").write_bytes(b"id,name\n666,mallory\n")
    message = _refused(data_set, "top.csv.ppml", "top.csv")
    assert "missing" in message and "not members" in message


@pytest.mark.parametrize("attack", ["delete", "duplicate", "rename", "truncate"])
def test_deleted_duplicated_renamed_truncated_members_are_refused(data_set, attack):
    enc = data_set["enc"]
    victim = enc / "a" / "mid.txt.ppml"
    if attack == "delete":
        victim.unlink()
        _refused(data_set, "a/mid.txt.ppml")
    elif attack == "duplicate":
        shutil.copy2(victim, enc / "a" / "mid-copy.txt.ppml")
        _refused(data_set, "a/mid-copy.txt.ppml")
    elif attack == "rename":
        victim.rename(enc / "a" / "renamed.txt.ppml")
        _refused(data_set, "a/mid.txt.ppml", "a/renamed.txt.ppml")
    else:
        victim.write_bytes(victim.read_bytes()[:-4096])
        _refused(data_set, "a/mid.txt.ppml")


def test_an_older_file_under_the_same_data_key_is_refused(data_set):
    """The same plaintext encrypted again under the same data key is a valid file of the same size: only its
    file id tells it from the member."""
    enc, key, wrapped = data_set["enc"], data_set["key"], data_set["wrapped"]
    older = data_set["tmp"] / "older.ppml"
    files.encrypt(str(data_set["plain"] / "top.csv"), str(older), key=key, envelope=(wrapped,), segment_size=4096)
    assert older.stat().st_size == (enc / "top.csv.ppml").stat().st_size
    shutil.copy2(older, enc / "top.csv.ppml")
    report = files.verify(str(enc), keyring=data_set["ring"])
    [failure] = report.failures
    assert failure["path"].endswith("top.csv.ppml") and "replaced by another file" in failure["error"]["message"]
    with pytest.raises(IntegrityError, match="replaced by another file"):
        files.decrypt(str(enc), str(data_set["tmp"] / "out"), keyring=data_set["ring"])
    assert not (data_set["tmp"] / "out").exists()


def _manifest_path(enc: Path, version: int = 1) -> Path:
    return enc / MANIFEST_FOLDER / f"v{version:08d}.json"


def test_an_edited_manifest_fails_authentication(data_set):
    path = _manifest_path(data_set["enc"])
    document = json.loads(path.read_bytes())
    document["members"] = [m for m in document["members"] if m["path"] != "top.csv.ppml"]
    path.write_text(json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n")
    (data_set["enc"] / "top.csv.ppml").unlink()  # what the edit tries to hide
    message = _refused(data_set)
    assert "failed authentication" in message


def test_a_manifest_copied_from_another_data_set_is_refused(data_set):
    """Same data key, same file names: the other data set's manifest names other files."""
    other = data_set["tmp"] / "other"
    files.encrypt(str(data_set["plain"]), str(other), key=data_set["key"], envelope=(data_set["wrapped"],),
                  segment_size=4096)
    shutil.copy2(_manifest_path(other), _manifest_path(data_set["enc"]))
    report = files.verify(str(data_set["enc"]), keyring=data_set["ring"])
    assert len(report.failures) == len(data_set["visible"])  # every member is "another file"
    assert all("replaced by another file" in f["error"]["message"] for f in report.failures)


def test_a_manifest_copied_over_a_newer_version_is_refused(data_set):
    enc = data_set["enc"]
    current = latest_version(locate(str(enc)), data_set["ring"])
    write_version(locate(str(enc)), current.manifest.members, key=data_set["key"], envelope=(data_set["wrapped"],),
                  writer="test", previous=current)
    shutil.copy2(_manifest_path(enc, 1), _manifest_path(enc, 2))
    assert "states version 1, not 2" in _refused(data_set)


def test_rollback_is_detected_when_the_version_to_expect_is_known(data_set):
    enc = data_set["enc"]
    root = locate(str(enc))
    current = latest_version(root, data_set["ring"])
    second = write_version(root, current.manifest.members, key=data_set["key"], envelope=(data_set["wrapped"],),
                           writer="test", previous=current)
    assert second.manifest.version == 2 and second.manifest.previous == current.digest
    _manifest_path(enc, 2).unlink()  # the attacker rolls the data set back to version 1
    assert not files.verify(str(enc), keyring=data_set["ring"]).failures  # alone, a reader cannot tell
    with pytest.raises(IntegrityError, match="older than the required 2"):
        files.decrypt(str(enc), str(data_set["tmp"] / "out"), keyring=data_set["ring"], min_version=2)
    shutil.rmtree(enc / MANIFEST_FOLDER)
    with pytest.raises(IntegrityError, match="no data-set manifest, but version 2"):
        files.decrypt(str(enc), str(data_set["tmp"] / "out"), keyring=data_set["ring"], min_version=2)


def test_two_writers_of_one_version_cannot_both_win(data_set):
    root = locate(str(data_set["enc"]))
    current = latest_version(root, data_set["ring"])
    arguments = {"key": data_set["key"], "envelope": (data_set["wrapped"],), "writer": "test", "previous": current}
    write_version(root, current.manifest.members, **arguments)
    with pytest.raises(AlreadyExistsError):
        write_version(root, current.manifest.members[:1], **arguments)
    assert latest_version(root, data_set["ring"]).manifest.members == current.manifest.members


def test_a_folder_without_manifest_reads_with_a_warning_and_refuses_plaintext_among_encrypted(data_set):
    enc = data_set["enc"]
    shutil.rmtree(enc / MANIFEST_FOLDER)
    with pytest.warns(UnprotectedDataWarning, match="no data-set manifest"):
        assert not files.verify(str(enc), keyring=data_set["ring"]).failures
    (enc / "injected.csv").write_bytes(b"id,name\n666,mallory\n")
    with pytest.warns(UnprotectedDataWarning), pytest.raises(IntegrityError, match="plaintext file.*injected.csv"):
        files.decrypt(str(enc), str(data_set["tmp"] / "out"), keyring=data_set["ring"])
    # asked for by name, plaintext is read as plaintext
    files.decrypt(str(enc / "injected.csv"), str(data_set["tmp"] / "plain.csv"), mode="plain_text")
    assert (data_set["tmp"] / "plain.csv").read_bytes() == b"id,name\n666,mallory\n"


def _cli_data_set(tmp_path: Path) -> Cli:
    """A command-line sandbox whose ``enc/`` was made by ``ppml encrypt`` of a plain folder."""
    cli = Cli(tmp_path)
    cli.fast_keystore()
    assert cli.run("keys", "data-key", "--out", "dk.json").returncode == 0
    write_plain(tmp_path / "plain")
    assert cli.run("encrypt", "plain", "enc", "--data-key", "dk.json").returncode == 0
    return cli


def test_attacks_through_the_command_line_exit_4_naming_the_member(tmp_path):
    cli = _cli_data_set(tmp_path)
    (tmp_path / "enc" / "x.csv.ppml").unlink()
    (tmp_path / "enc" / "x.csv").write_bytes(b"id,amount\n1,1000000\n")
    verify, decrypt = cli.run_many(("verify", "enc", "--json"), ("decrypt", "enc", "out"))
    assert verify.returncode == decrypt.returncode == 4
    assert "x.csv.ppml" in decrypt.stderr and "x.csv" in decrypt.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] is False and report["details"][0]["kind"] == "data set"
    assert not (tmp_path / "out").exists()


def test_no_manifest_warning_reaches_the_command_line(tmp_path):
    cli = _cli_data_set(tmp_path)
    shutil.rmtree(tmp_path / "enc" / MANIFEST_FOLDER)
    result = cli.run("verify", "enc")
    assert result.returncode == 0 and "warning" in result.stderr and "no data-set manifest" in result.stderr


# -- the manifest format ---------------------------------------------------------------------------------


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_any_change_to_a_sealed_manifest_is_refused(data, tree_kms):
    key, wrapped = _key(tree_kms)
    members = [Member(f"part-{i}.csv.ppml", "aes_gcm_stream", f"{i:032x}", 1000 + i) for i in range(3)]
    sealed = Manifest.new(members, key_id=key.key_id, envelope=(wrapped,), writer="test").seal(key)
    position = data.draw(st.integers(0, len(sealed) - 2))
    flipped = bytearray(sealed)
    flipped[position] ^= data.draw(st.integers(1, 255))
    try:
        manifest, mac = Manifest.parse(bytes(flipped), name="m")
        manifest.authenticate(mac, key, name="m")
    except (IntegrityError, CorruptHeaderError):
        return
    # A change that parses to the same document (e.g. inside the unauthenticated envelope's padding) is harmless
    # only if nothing that is authenticated changed.
    assert Manifest.parse(bytes(flipped), name="m")[0] == Manifest.parse(sealed, name="m")[0]


_KEYS: dict[str, tuple] = {}


def _key(kms):
    if str(kms.path) not in _KEYS:
        _KEYS[str(kms.path)] = kms.generate_data_key("default")
    return _KEYS[str(kms.path)]


def test_manifest_members_must_be_plain_relative_paths(tree_kms):
    key, wrapped = _key(tree_kms)
    for path in ("/etc/passwd", "../x.ppml", "a//b.ppml", "a/./b.ppml"):
        sealed = Manifest.new([Member(path, "aes_gcm_stream", "00" * 16, 1)], key_id=key.key_id,
                              envelope=(wrapped,), writer="test").seal(key)
        with pytest.raises(CorruptHeaderError, match="out of range"):
            Manifest.parse(sealed, name="m")


def test_the_manifest_holds_no_key_material(data_set):
    text = _manifest_path(data_set["enc"]).read_text()
    material = data_set["key"].unsafe_material()
    assert material.hex() not in text and material not in text.encode()
    document = json.loads(text)
    assert document["key_id"] == data_set["key"].key_id
    assert document["envelope"] == [data_set["wrapped"].to_json()]  # wrapped only

