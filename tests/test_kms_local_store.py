"""The local key store under concurrent writers, links, replaced and damaged files, and weak settings.

Several processes (a broker, ``ppml keys rotate`` run by an operator, a job) may hold one key store. A
change must never lose a key or a version another process already wrapped data keys with, a symbolic link
must stay a link, and a damaged file must end in an error naming the field, not a traceback.
"""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest
from keystores import FAST_KDF, make_keystore

from ppml.crypto.datakey import DataKey
from ppml.errors import AlreadyExistsError, ConfigError, UsageError
from ppml.keys.local import MIN_PASSPHRASE_LENGTH, LocalKms

PASSPHRASE = "local store test passphrase"


@pytest.fixture
def store(tmp_path) -> LocalKms:
    return make_keystore(tmp_path / "ks.json", PASSPHRASE, "default")


def _opened(path) -> LocalKms:
    """Another process's view: a new instance that has read the store."""
    kms = LocalKms(path, PASSPHRASE)
    kms.list_keys()
    return kms


def test_two_writers_creating_keys_keep_both(store):
    first, second = _opened(store.path), _opened(store.path)
    first.create_key("from-first")
    second.create_key("from-second")
    assert {info.name for info in LocalKms(store.path, PASSPHRASE).list_keys()} == {
        "default", "from-first", "from-second"}


def test_two_writers_rotating_get_distinct_versions_and_every_data_key_unwraps(store):
    first, second = _opened(store.path), _opened(store.path)
    first.rotate_key("default")
    key_a, wrapped_a = first.generate_data_key("default")
    second.rotate_key("default")
    key_b, wrapped_b = second.generate_data_key("default")
    assert (wrapped_a.version, wrapped_b.version) == ("2", "3")
    fresh = LocalKms(store.path, PASSPHRASE)
    assert fresh.unwrap(wrapped_a) == key_a and fresh.unwrap(wrapped_b) == key_b
    assert fresh.describe_key("default").current_version == "3"


def _create_keys(path: str, prefix: str, count: int, start) -> None:
    kms = _opened(path)
    start.wait()
    for index in range(count):
        kms.create_key(f"{prefix}-{index}")


def test_processes_changing_the_store_at_once_lose_nothing(store):
    context = multiprocessing.get_context("fork")
    start = context.Barrier(3)
    workers = [context.Process(target=_create_keys, args=(str(store.path), name, 6, start)) for name in "abc"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    names = {info.name for info in LocalKms(store.path, PASSPHRASE).list_keys()}
    assert names == {"default"} | {f"{p}-{i}" for p in "abc" for i in range(6)}


def test_a_key_store_behind_a_symbolic_link_stays_a_link(tmp_path):
    real = make_keystore(tmp_path / "real" / "ks.json", PASSPHRASE, "default")
    link = tmp_path / "link.json"
    link.symlink_to(real.path)
    LocalKms(link, PASSPHRASE).rotate_key("default")
    assert link.is_symlink() and os.readlink(link) == str(real.path)
    assert LocalKms(real.path, PASSPHRASE).describe_key("default").current_version == "2"


def test_a_store_replaced_under_a_writer_is_not_overwritten(store, tmp_path):
    writer = _opened(store.path)
    other = make_keystore(tmp_path / "other.json", PASSPHRASE, "default")
    os.replace(other.path, store.path)
    before = store.path.read_bytes()
    with pytest.raises(ConfigError, match="changed while this process had it open: its store_id is different"):
        writer.create_key("late")
    assert store.path.read_bytes() == before


def test_a_version_that_vanished_under_a_writer_refuses_the_change(store):
    writer = _opened(store.path)
    writer.rotate_key("default")
    doc = json.loads(store.path.read_text())
    del doc["keys"]["default"]["versions"]["2"]
    doc["keys"]["default"]["current"] = "1"
    store.path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="version 2 of 'default' vanished or changed"):
        writer.create_key("late")


def _mutate(doc: dict, path: str, value) -> None:
    *parents, last = path.split("/")
    for part in parents:
        doc = doc[part]
    if value is KeyError:
        del doc[last]
    else:
        doc[last] = value


@pytest.mark.parametrize("path, value, message", [
    ("keys/default/versions", ["1"], "key 'default' has no versions mapping"),
    ("keys/default/current", "7", "no current version among them"),
    ("keys/default/versions/1/material", "not base64!", "material of default v1 is not base64"),
    ("keys/default/versions/1/state", KeyError, "is not a numbered version with a state"),
    ("keys/default", "text", "key 'default' has no versions mapping"),
    ("keys", [], "keys is not a mapping"),
    ("kdf/iterations", "3", "kdf iterations is '3', outside"),
    ("kdf/salt", 7, "kdf salt is not base64"),
    ("kdf/name", "scrypt", "unsupported key store KDF 'scrypt'"),
    ("store_id", "zz", "store_id 'zz' is not 16 bytes"),
    ("check", KeyError, "check is not base64"),
])
def test_malformed_fields_are_errors_naming_the_field(store, path, value, message):
    doc = json.loads(store.path.read_text())
    _mutate(doc, path, value)
    store.path.write_text(json.dumps(doc))
    kms = LocalKms(store.path, PASSPHRASE)
    for operation in (kms.list_keys, lambda: kms.unwrap(store.generate_data_key("default")[1])):
        with pytest.raises(ConfigError, match=message):
            operation()


@pytest.mark.parametrize("text", ["[" * 100_000, "\xff\xfe", "[]", "null"])
def test_a_key_store_that_is_not_a_json_object_is_a_config_error(tmp_path, text):
    path = tmp_path / "ks.json"
    path.write_bytes(text.encode("latin-1"))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="is not a valid ppml key store"):
        LocalKms(path, PASSPHRASE).list_keys()


def test_a_short_passphrase_is_refused_for_a_new_store(tmp_path):
    with pytest.raises(UsageError, match=f"has 1 characters; at least {MIN_PASSPHRASE_LENGTH} are needed"):
        LocalKms(tmp_path / "ks.json", "x").create_store(kdf=FAST_KDF)
    assert not (tmp_path / "ks.json").exists()
    LocalKms(tmp_path / "ks.json", "y" * MIN_PASSPHRASE_LENGTH).create_store(kdf=FAST_KDF)


@pytest.mark.parametrize("kdf, message", [
    ({"memory_kib": 1024, "iterations": 1, "lanes": 1}, "kdf memory_kib is 1024, outside 7168.."),
    ({"memory_kib": 7 * 1024, "iterations": 1, "lanes": 1}, "memory_kib x iterations is 7168, below 35840"),
    ({"memory_kib": 2 ** 40, "iterations": 1, "lanes": 1}, "kdf memory_kib is 1099511627776, outside"),
    ({"memory_kib": 64 * 1024, "iterations": 0, "lanes": 1}, "kdf iterations is 0, outside 1..64"),
    ({"memory_kib": 64 * 1024, "iterations": 3, "lanes": 1000}, "kdf lanes is 1000, outside 1..64"),
])
def test_kdf_settings_have_a_floor_and_a_ceiling_when_created_or_read(tmp_path, store, kdf, message):
    with pytest.raises(ConfigError, match=message):
        LocalKms(tmp_path / "new.json", PASSPHRASE).create_store(kdf=kdf)
    doc = json.loads(store.path.read_text())
    doc["kdf"].update(kdf)
    store.path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=message):
        LocalKms(store.path, PASSPHRASE).unwrap(store.wrap(DataKey.generate(), "default"))


def test_creating_an_existing_key_in_another_writer_is_refused(store):
    first, second = _opened(store.path), _opened(store.path)
    first.create_key("twice")
    with pytest.raises(AlreadyExistsError, match="primary key 'twice' already exists"):
        second.create_key("twice")
