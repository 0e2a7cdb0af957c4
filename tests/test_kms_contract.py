"""The contract every KMS backend honours, run against each backend with its own fixture.

``wrapped.key`` is the backend's :meth:`~ppml.keys.kms.KeyManagementService.key_identifier` of the key name:
the name for the local key store, the versionless key URL for Azure Key Vault.

Later backends (Azure Key Vault against its test server, PKCS#11 on SoftHSM2, the key broker) join by adding
a factory to ``BACKENDS``.
"""

from __future__ import annotations

import pickle

import pytest
from keystores import FAST_KDF, make_keystore
from keyvault_server import keyvault, keyvault_session  # noqa: F401  (fixtures for the azure backend)
from softhsm import softhsm, softhsm_token  # noqa: F401  (fixtures for the pkcs11 backend)

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import AlreadyExistsError, KeyAccessError, NotFoundError, UsageError, WrongKeyError
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.keyring import KeyRing, clear_cache
from ppml.keys.kms import KeyManagementService, available_kms, kms_class, open_kms
from ppml.keys.local import LocalKms


def _local(tmp_path, request=None) -> LocalKms:
    return make_keystore(tmp_path / "ks.json", "correct horse")


def _azure(tmp_path, request) -> KeyManagementService:
    """Azure Key Vault through the real SDK, against the local test server (tests/keyvault_server.py)."""
    pytest.importorskip("azure.keyvault.keys")
    from keyvault_server import StaticTokenCredential

    server = request.getfixturevalue("keyvault")
    return open_kms("azure", vault=server.url, credential=StaticTokenCredential("contract-token"),
                    connection_verify=str(server.pki.ca_path), verify_challenge_resource=False, key_size=2048,
                    retry_backoff_factor=0.01)


def _pkcs11(tmp_path, request) -> KeyManagementService:
    """PKCS#11 on a fresh SoftHSM2 token (tests/softhsm.py); skips when SoftHSM2 is not installed."""
    return open_kms("pkcs11", **request.getfixturevalue("softhsm_token").settings)


BACKENDS = {"local": _local, "azure": _azure, "pkcs11": _pkcs11}


@pytest.fixture(params=sorted(BACKENDS))
def kms(request, tmp_path) -> KeyManagementService:
    clear_cache()
    backend = BACKENDS[request.param](tmp_path, request)
    backend.create_key("contract")
    return backend


def test_wrap_unwrap_round_trip(kms):
    key, wrapped = kms.generate_data_key("contract")
    assert wrapped.kms == kms.name and wrapped.key == kms.key_identifier("contract") and wrapped.version
    assert key.unsafe_material() not in wrapped.wrapped
    assert kms.unwrap(wrapped) == key


def test_each_wrap_of_the_same_key_unwraps(kms):
    key = DataKey.generate()
    first, second = kms.wrap(key, "contract"), kms.wrap(key, "contract")
    assert kms.unwrap(first) == kms.unwrap(second) == key


def test_tampered_wrapped_key_is_refused(kms):
    _, wrapped = kms.generate_data_key("contract")
    blob = bytearray(wrapped.wrapped)
    blob[-1] ^= 1
    with pytest.raises(KeyAccessError) as info:
        kms.unwrap(WrappedKey(wrapped.kms, wrapped.key, wrapped.version, bytes(blob)))
    assert "contract" in str(info.value)


def test_unknown_key_and_version(kms):
    key = DataKey.generate()
    with pytest.raises(NotFoundError):
        kms.wrap(key, "no-such-key")
    _, wrapped = kms.generate_data_key("contract")
    with pytest.raises(KeyAccessError, match="v99"):
        kms.unwrap(WrappedKey(wrapped.kms, wrapped.key, "99", wrapped.wrapped))


def test_rotation_keeps_old_versions_readable(kms):
    old_key, old_wrapped = kms.generate_data_key("contract")
    info = kms.rotate_key("contract")
    assert info.current_version != old_wrapped.version
    new_key, new_wrapped = kms.generate_data_key("contract")
    assert new_wrapped.version == info.current_version
    assert kms.unwrap(old_wrapped) == old_key
    assert kms.unwrap(new_wrapped) == new_key


def test_version_header_is_bound_to_the_wrapping(kms):
    """Relabelling a v1-wrapped key as v2 must not unwrap (the version is authenticated)."""
    _, wrapped = kms.generate_data_key("contract")
    kms.rotate_key("contract")
    relabelled = WrappedKey(wrapped.kms, wrapped.key, kms.describe_key("contract").current_version, wrapped.wrapped)
    with pytest.raises(KeyAccessError):
        kms.unwrap(relabelled)


def test_describe_never_shows_material(kms):
    key, wrapped = kms.generate_data_key("contract")
    text = repr(kms.describe_key("contract").to_json()) + repr(kms) + repr(wrapped) + repr(key)
    assert key.unsafe_material().hex() not in text
    assert "redacted" in repr(key)


def _counting(kms: KeyManagementService, *, cacheable: bool) -> list[WrappedKey]:
    """Make ``kms`` record every unwrap it is asked for (in the returned list), and say whether its keys may be
    cached; it stays the same backend otherwise."""
    calls: list[WrappedKey] = []

    class Counting(type(kms)):
        def unwrap(self, wrapped: WrappedKey) -> DataKey:
            calls.append(wrapped)
            return super().unwrap(wrapped)

    Counting.cacheable = cacheable
    kms.__class__ = Counting
    return calls


def test_keyring_unwraps_a_key_once_per_process(kms):
    calls = _counting(kms, cacheable=True)
    key, wrapped = kms.generate_data_key("contract")
    assert KeyRing([kms]).unwrap([wrapped], name="f1") == key
    assert KeyRing([kms]).unwrap([wrapped], name="f2") == key  # another ring: the cache is the process's
    assert calls == [wrapped]
    clear_cache()
    assert KeyRing([kms]).unwrap([wrapped], name="f3") == key
    assert calls == [wrapped, wrapped]


def test_keyring_asks_a_backend_that_is_not_cacheable_every_time(kms):
    calls = _counting(kms, cacheable=False)
    key, wrapped = kms.generate_data_key("contract")
    ring = KeyRing([kms])
    assert ring.unwrap([wrapped], name="f1") == key
    assert ring.unwrap([wrapped], name="f2") == key
    assert calls == [wrapped, wrapped]


def test_keyring_reports_every_failure(kms):
    key, wrapped = kms.generate_data_key("contract")
    foreign = WrappedKey("nowhere", "k", "1", b"\x00" * 40)
    ring = KeyRing([kms], open_backend=lambda name: None)
    assert ring.unwrap([foreign, wrapped], name="f1") == key
    with pytest.raises(KeyAccessError) as info:
        KeyRing([], open_backend=lambda name: None).unwrap([foreign], name="data/f2.ppml")
    message = str(info.value)
    assert "data/f2.ppml" in message and "nowhere:k#v1" in message


def test_keyring_checks_the_data_key_id(kms):
    _, wrapped = kms.generate_data_key("contract")
    clear_cache()
    with pytest.raises(KeyAccessError, match="id"):
        KeyRing([kms]).unwrap([wrapped], name="dk.json", key_id="0" * 32)


def test_keyring_checks_the_data_key_id_of_a_cached_key(kms, tmp_path):
    key, wrapped = kms.generate_data_key("contract")
    DataKeyFile.new(key.key_id, [wrapped]).save(tmp_path / "real.json")
    ring = KeyRing([kms])
    assert ring.open_data_key_file(str(tmp_path / "real.json"))[1] == key  # now cached
    # The same wrapped key under another key's id: a file edited, or assembled from two files.
    DataKeyFile.new(DataKey.generate().key_id, [wrapped]).save(tmp_path / "edited.json")
    with pytest.raises(WrongKeyError, match=f"has id {key.key_id}, but the file names"):
        ring.open_data_key_file(str(tmp_path / "edited.json"))


# -- local key store specifics --------------------------------------------------------------------------


def test_local_store_file_is_private_and_refused_when_readable(tmp_path):
    kms = _local(tmp_path)
    kms.create_key()
    assert (kms.path.stat().st_mode & 0o777) == 0o600
    kms.path.chmod(0o644)
    from ppml.errors import ConfigError

    with pytest.raises(ConfigError, match="chmod 600"):
        LocalKms(kms.path, "correct horse").list_keys()


def test_local_wrong_passphrase_is_its_own_error(tmp_path):
    kms = _local(tmp_path)
    kms.create_key()
    _, wrapped = kms.generate_data_key("default")
    with pytest.raises(KeyAccessError, match="wrong passphrase"):
        LocalKms(kms.path, "wrong").unwrap(wrapped)


def test_local_missing_store_and_passphrase(tmp_path, monkeypatch):
    monkeypatch.delenv("PPML_KEYSTORE_PASSWORD", raising=False)
    with pytest.raises(NotFoundError, match="ppml keys init"):
        LocalKms(tmp_path / "none.json", "pw").list_keys()
    kms = _local(tmp_path)
    kms.create_key()
    _, wrapped = kms.generate_data_key("default")
    with pytest.raises(KeyAccessError, match="PPML_KEYSTORE_PASSWORD"):
        LocalKms(kms.path).unwrap(wrapped)


def test_local_passphrase_callable_is_lazy(tmp_path):
    kms = _local(tmp_path)
    kms.create_key()
    calls = []
    lazy = LocalKms(kms.path, lambda: calls.append(1) or "correct horse")
    lazy.list_keys()
    assert calls == []
    lazy.generate_data_key("default")
    lazy.generate_data_key("default")
    assert calls == [1]


def test_local_refuses_foreign_key_store(tmp_path):
    one = _local(tmp_path / "a")
    one.create_key()
    other = _local(tmp_path / "b")
    other.create_key()
    _, wrapped = one.generate_data_key("default")
    with pytest.raises(KeyAccessError, match="key store"):
        other.unwrap(wrapped)


def test_local_store_creation_is_not_destructive(tmp_path):
    kms = _local(tmp_path)
    with pytest.raises(AlreadyExistsError):
        LocalKms(kms.path, "x").create_store(kdf=FAST_KDF)
    kms.create_key("k1")
    with pytest.raises(AlreadyExistsError):
        kms.create_key("k1")
    with pytest.raises(UsageError):
        kms.create_key("bad name/with#chars")


def test_local_retire(tmp_path):
    kms = _local(tmp_path)
    kms.create_key()
    _, v1 = kms.generate_data_key("default")
    with pytest.raises(UsageError, match="current version"):
        kms.retire_version("default", "1")
    kms.rotate_key("default")
    kms.retire_version("default", "1")
    assert [v.state for v in kms.describe_key("default").versions] == ["retired", "enabled"]
    with pytest.raises(KeyAccessError, match="retired"):
        LocalKms(kms.path, "correct horse").unwrap(v1)


def test_local_kms_is_not_picklable(tmp_path):
    with pytest.raises(TypeError):
        pickle.dumps(_local(tmp_path))


# -- registry ---------------------------------------------------------------------------------------------


def test_registry_by_name_and_bigdl_names():
    assert kms_class("local") is LocalKms
    assert kms_class("LOCAL") is LocalKms
    assert {"local", "bigdl-plaintext", "SimpleKeyManagementService"} <= set(available_kms())
    assert LocalKms.data_key_kind == "ppml"
    assert {kms_class(name).data_key_kind for name in ("bigdl-plaintext", "SimpleKeyManagementService")} == {"bigdl"}
    with pytest.raises(UsageError, match="choose one of"):
        open_kms("no-such-kms")


def test_registry_refuses_silent_replacement():
    from ppml.keys.kms import register_kms

    class Impostor(LocalKms):
        name = "local"

    with pytest.raises(ValueError, match="already registered"):
        register_kms(Impostor)


def test_data_key_handle_is_fenced():
    key = DataKey.generate()
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(key)
    assert key.unsafe_material().hex() not in repr(key) + str(key)
    assert key == DataKey(key.unsafe_material()) and key != DataKey.generate()
    with pytest.raises(TypeError):
        DataKey("not bytes")  # type: ignore[arg-type]
