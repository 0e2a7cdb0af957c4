"""Azure Key Vault: the ``azure`` and ``bigdl-azure`` backends, secrets and the command line, through the real SDK.

Everything runs the unmodified ``azure-keyvault-keys``/``-secrets`` and ``azure-identity`` packages against
``tests/keyvault_server.py``, a local HTTPS server implementing Key Vault's data-plane REST contract with real
cryptography (no official emulator exists, and there is no network here).

Two ways in:

* Library tests pass ``credential=StaticTokenCredential(...)``, ``connection_verify=<test CA>`` and
  ``verify_challenge_resource=False`` (the loopback URL ``https://127.0.0.1:PORT`` can never match the
  challenge resource ``vault.azure.net``): exactly the options the constructor offers to any caller.
* Command-line tests (and a few in-process ones marked "production path") change nothing in ppml: the CLI builds
  ``DefaultAzureCredential`` and keeps challenge verification on. The environment supplies what Azure would:
  a managed-identity token endpoint (``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``, App Service's protocol, served by
  the test server's :class:`IdentityEndpoint`), ``HTTPS_PROXY`` tunnelling ``kv1.vault.azure.net:443`` to the
  test server, and ``REQUESTS_CA_BUNDLE`` trusting the test CA, which signed a ``*.vault.azure.net``
  certificate. So ``--vault kv1`` means ``https://kv1.vault.azure.net`` as in production, and no test-only
  credential switch exists in ppml. (An ``EnvironmentCredential`` with a client secret would need
  login.microsoftonline.com; the managed-identity endpoint is the one ``DefaultAzureCredential`` source that
  works offline.)
"""

# The server fixtures are imported from keyvault_server and then requested by name (pytest's way), which
# pyflakes reports as redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import base64
import io
import json
import os
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("azure.keyvault.keys")

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding  # noqa: E402
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap  # noqa: E402
from keyvault_server import (  # noqa: E402,F401  (fixtures)
    StaticTokenCredential,
    azure_identity_env,
    keyvault,
    keyvault_session,
)

from ppml.crypto.bigdl_cbc import BigdlCbcWriter  # noqa: E402
from ppml.crypto.datakey import DataKey  # noqa: E402
from ppml.crypto.envelope import WrappedKey  # noqa: E402
from ppml.errors import (  # noqa: E402
    AlreadyExistsError,
    ConfigError,
    KeyAccessError,
    NotFoundError,
    UsageError,
)
from ppml.io import files  # noqa: E402
from ppml.io.storage import locate  # noqa: E402
from ppml.keys import azure_secrets, azure_vault  # noqa: E402
from ppml.keys.azure import AzureKeyVaultKms  # noqa: E402
from ppml.keys.bigdl_azure import BigdlAzureKms  # noqa: E402
from ppml.keys.keyring import KeyRing, clear_cache  # noqa: E402
from ppml.keys.kms import kms_class, open_kms  # noqa: E402
from ppml.keys.settings import KeySettings, read_secret_source  # noqa: E402

TOKEN = "static-test-token-7f3a9c1e55d24b0e"
PPML = Path(sys.executable).parent / "ppml"
OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def options(server, **extra) -> dict:
    """Constructor options for a library client of the loopback test server (fast retries)."""
    return {"credential": StaticTokenCredential(TOKEN), "connection_verify": str(server.pki.ca_path),
            "verify_challenge_resource": False, "retry_backoff_factor": 0.01, "retry_backoff_max": 0.05, **extra}


def make_kms(server, vault: str | None = None, **extra) -> AzureKeyVaultKms:
    return AzureKeyVaultKms(vault or server.url, **{"key_size": 2048, **options(server), **extra})


def ops(server, since: int = 0) -> list[str]:
    """``METHOD /path`` of the requests the server received, without the query."""
    return [f"{r['method']} {str(r['path']).split('?')[0]}" for r in server.requests[since:]]


def assert_clean(error: BaseException, *secrets: bytes | str) -> str:
    """The error's full text (message and hint) holds no token and no key material."""
    text = str(error) + repr(getattr(error, "to_dict", dict)())
    for secret in (TOKEN, *secrets):
        value = secret.decode("latin-1") if isinstance(secret, bytes) else secret
        assert value not in text
        if isinstance(secret, bytes):
            assert secret.hex() not in text and base64.b64encode(secret).decode() not in text
    return text


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


# -- the backend ----------------------------------------------------------------------------------------------


def test_default_key_is_rsa_3072_wrapping_locally_with_rsa_oaep_256(keyvault):
    kms = AzureKeyVaultKms(keyvault.url, **options(keyvault))
    info = kms.create_key("tpch")
    assert (info.kms, info.name, info.details["kty"], info.details["key_size"]) == ("azure", "tpch", "RSA", 3072)
    assert info.details["key_id"] == f"{keyvault.url}/keys/tpch" == kms.key_identifier("tpch")
    assert [v.version for v in info.versions] == [info.current_version]

    start = len(keyvault.requests)
    key, wrapped = kms.generate_data_key("tpch")
    assert ops(keyvault, start) == ["GET /keys/tpch/"]  # RSA wraps locally: only the current version is read
    assert (wrapped.kms, wrapped.key, wrapped.version) == ("azure", f"{keyvault.url}/keys/tpch", info.current_version)
    assert wrapped.reference == f"azure:{keyvault.url}/keys/tpch#v{info.current_version}"
    assert wrapped.wrapped[:1] == b"\x01" and len(wrapped.wrapped) == 1 + 384
    # the documented layout: byte 1 on is Key Vault's own RSA-OAEP-256 wrap, as `az keyvault key decrypt` reads it
    private = keyvault.rsa_private_key("tpch")
    assert private.decrypt(wrapped.wrapped[1:], OAEP_SHA256) == key.unsafe_material()

    start = len(keyvault.requests)
    assert AzureKeyVaultKms(keyvault.url, **options(keyvault)).unwrap(wrapped) == key
    assert f"POST /keys/tpch/{wrapped.version}/unwrapkey" in ops(keyvault, start)


def test_hsm_keys_and_managed_hsm_aes_key_wrap(keyvault):
    rsa_hsm = make_kms(keyvault, hsm=True)
    assert rsa_hsm.create_key("premium").details["kty"] == "RSA-HSM"

    hsm = make_kms(keyvault, managed_hsm=True)
    info = hsm.create_key("mhsm")
    assert (info.details["kty"], info.details["hsm"]) == ("oct-HSM", True)
    start = len(keyvault.requests)
    key, wrapped = hsm.generate_data_key("mhsm")
    # symmetric keys wrap in the vault (the SDK's local path would use a random key of its own)
    assert f"POST /keys/mhsm/{wrapped.version}/wrapkey" in ops(keyvault, start)
    assert wrapped.wrapped[:1] == b"\x02" and len(wrapped.wrapped) == 1 + 40
    assert aes_key_unwrap(keyvault.rsa_private_key("mhsm"), wrapped.wrapped[1:]) == key.unsafe_material()
    assert make_kms(keyvault).unwrap(wrapped) == key  # the algorithm travels in the wrapped key
    assert AzureKeyVaultKms("https://hsm1.managedhsm.azure.net", credential=StaticTokenCredential(TOKEN)).managed_hsm


def test_rotation_adds_versions_and_old_ones_keep_unwrapping(keyvault):
    kms = make_kms(keyvault)
    first = kms.create_key("rot")
    old_key, old = kms.generate_data_key("rot")
    kms.rotate_key("rot")
    info = kms.rotate_key("rot")
    assert len(info.versions) == 3 and info.versions[0].version == first.current_version
    assert info.versions[-1].version == info.current_version and {v.state for v in info.versions} == {"enabled"}
    new_key, new = kms.generate_data_key(kms.key_identifier("rot"))  # the versionless URL names the key too
    assert new.version == info.current_version != old.version
    fresh = make_kms(keyvault)
    assert fresh.unwrap(old) == old_key and fresh.unwrap(new) == new_key
    assert [i.name for i in kms.list_keys()] == ["rot"]


def test_names_urls_and_existing_keys(keyvault, monkeypatch):
    assert azure_vault.vault_url("kv1") == "https://kv1.vault.azure.net"
    assert azure_vault.vault_url("KV1.vault.azure.net") == "https://kv1.vault.azure.net"
    assert azure_vault.vault_url("https://kv1.vault.azure.net/") == "https://kv1.vault.azure.net"
    assert azure_vault.vault_url("hsm1", managed_hsm=True) == "https://hsm1.managedhsm.azure.net"
    for bad in ("http://kv1.vault.azure.net", "https://kv1.vault.azure.net/keys/x", "k", "kv_1", "a" * 25):
        with pytest.raises(ConfigError):
            azure_vault.vault_url(bad)
    monkeypatch.delenv(azure_vault.VAULT_ENV, raising=False)
    with pytest.raises(ConfigError, match="PPML_AZURE_VAULT"):
        AzureKeyVaultKms(credential=StaticTokenCredential(TOKEN))
    monkeypatch.setenv(azure_vault.VAULT_ENV, "kv2")
    assert AzureKeyVaultKms(credential=StaticTokenCredential(TOKEN)).vault_url == "https://kv2.vault.azure.net"

    kms = make_kms(keyvault)
    kms.create_key("dup")
    with pytest.raises(AlreadyExistsError, match="rotate"):
        kms.create_key("dup")
    with pytest.raises(UsageError, match="letters, digits and hyphens"):
        kms.create_key("bad_name")
    with pytest.raises(UsageError, match="not in"):
        kms.wrap(DataKey.generate(), "https://kv9.vault.azure.net/keys/dup")
    with pytest.raises(UsageError, match="version"):
        kms.wrap(DataKey.generate(), f"{keyvault.url}/keys/dup/0123abcd")


def test_unwrap_only_talks_to_the_configured_vault(keyvault):
    kms = make_kms(keyvault)
    kms.create_key("k")
    key, wrapped = kms.generate_data_key("k")
    start = len(keyvault.requests)
    forged = {"is a key of Key Vault https://evil.vault.azure.net": WrappedKey(
                  "azure", "https://evil.vault.azure.net/keys/k", wrapped.version, wrapped.wrapped),
              "does not name one key version": WrappedKey(
                  "azure", f"{keyvault.url}/keys/k/{wrapped.version}", "", wrapped.wrapped),
              "malformed": WrappedKey("azure", wrapped.key, wrapped.version, b"\x09" + wrapped.wrapped[1:])}
    for expected, candidate in forged.items():
        with pytest.raises(KeyAccessError) as info:
            kms.unwrap(candidate)
        assert expected in assert_clean(info.value, key.unsafe_material())
    assert ops(keyvault, start) == []  # refused before any request: no token goes to a vault named by a header
    with pytest.raises(TypeError, match="pickled"):
        import pickle

        pickle.dumps(kms)


def test_envelope_file_with_azure_and_local_copies_opens_through_either(keyvault, tree_kms, tmp_path):
    azure = make_kms(keyvault)
    azure.create_key("tpch")
    key = DataKey.generate()
    envelope = (azure.wrap(key, "tpch"), tree_kms.wrap(key, "default"))
    src = tmp_path / "plain.csv"
    src.write_bytes(b"id,amount\n" + b"1,10.5\n" * 5000)
    files.encrypt(str(src), str(tmp_path / "enc.ppml"), key=key, envelope=envelope, segment_size=4096)
    described = files.describe(locate(str(tmp_path / "enc.ppml")))
    assert [w.kms for w in described.envelope] == ["azure", "local"]
    for n, ring in enumerate((KeyRing([azure], open_backend=lambda name: None),
                              KeyRing([tree_kms], open_backend=lambda name: None))):
        clear_cache()
        files.decrypt(str(tmp_path / "enc.ppml"), str(tmp_path / f"out{n}.csv"), keyring=ring)
        assert (tmp_path / f"out{n}.csv").read_bytes() == src.read_bytes()
    # a ring with neither says which keys the file needs
    clear_cache()
    with pytest.raises(KeyAccessError) as info:
        KeyRing([], open_backend=lambda name: None).unwrap(described.envelope, name="enc.ppml")
    assert f"azure:{keyvault.url}/keys/tpch#v" in str(info.value) and "local:default#v1" in str(info.value)


# -- errors ---------------------------------------------------------------------------------------------------


def test_forbidden_names_identity_permission_and_command(keyvault):
    kms = make_kms(keyvault, client_id="0b6c7d8e-1f20-4a3b-9c4d-5e6f7a8b9c0d")
    kms.create_key("k")
    key, wrapped = kms.generate_data_key("k")

    keyvault.deny("keys", "unwrapKey")
    with pytest.raises(KeyAccessError) as info:
        make_kms(keyvault).unwrap(wrapped)
    text = assert_clean(info.value, key.unsafe_material())
    assert "appid=00000000-0000-0000-0000-00000000a11c" in text and "object id" in text  # as Key Vault saw it
    assert "'unwrapKey' key permission" in text and wrapped.reference in text
    assert "az keyvault set-policy -n 127.0.0.1 --key-permissions unwrapKey --object-id" in info.value.message
    assert 'az role assignment create --role "Key Vault Crypto User"' in info.value.hint
    assert info.value.exit_code == 5

    keyvault.allow_all()
    keyvault.deny("keys", "get")
    with pytest.raises(KeyAccessError, match="'get' key permission"):
        kms.generate_data_key("k")
    # an identity without 'get' still unwraps: the SDK notes the 403 and goes remote
    assert make_kms(keyvault).unwrap(wrapped) == key
    keyvault.allow_all()
    keyvault.deny("keys", "create")
    with pytest.raises(KeyAccessError) as info:
        make_kms(keyvault).create_key("other")
    assert "'create'" in info.value.message and "Key Vault Crypto Officer" in info.value.hint
    keyvault.deny("secrets", "get")
    with pytest.raises(KeyAccessError) as info:
        azure_secrets.get_secret(keyvault.url, "pw", **options(keyvault))
    assert "--secret-permissions get" in info.value.message and "Key Vault Secrets User" in info.value.hint


def test_not_found_and_disabled(keyvault):
    kms = make_kms(keyvault)
    with pytest.raises(NotFoundError) as info:
        kms.wrap(DataKey.generate(), "missing")
    assert "ppml keys init --kms azure" in info.value.hint and "az keyvault key create" in info.value.hint
    with pytest.raises(NotFoundError):
        kms.describe_key("missing")
    with pytest.raises(NotFoundError):
        kms.rotate_key("missing")
    kms.create_key("k")
    key, wrapped = kms.generate_data_key("k")
    with pytest.raises(KeyAccessError, match="v0123456789abcdef.*does not exist"):
        kms.unwrap(WrappedKey("azure", wrapped.key, "0123456789abcdef", wrapped.wrapped))

    keyvault.set_enabled("k", False)
    for attempt in (lambda: kms.generate_data_key("k"), lambda: make_kms(keyvault).unwrap(wrapped)):
        with pytest.raises(KeyAccessError) as info:
            attempt()
        assert "disabled" in info.value.message and "--enabled true" in info.value.hint
        assert_clean(info.value, key.unsafe_material())
    keyvault.set_enabled("k", True)
    assert kms.describe_key("k").versions[0].state == "enabled"


def test_throttling_is_retried_with_back_off_then_reported(keyvault):
    kms = make_kms(keyvault)
    kms.create_key("k")
    key, wrapped = kms.generate_data_key("k")
    keyvault.throttle(3, retry_after="0.05")
    started = time.monotonic()
    assert make_kms(keyvault).unwrap(wrapped) == key
    assert keyvault.throttled == 3 and time.monotonic() - started >= 0.15  # Retry-After was honoured

    keyvault.throttle(None)
    with pytest.raises(KeyAccessError) as info:
        make_kms(keyvault, retry_total=2).unwrap(wrapped)
    keyvault.throttle(0)
    assert "HTTP 429" in info.value.message and "after 2 retries" in info.value.message
    assert "retry later" in info.value.hint
    assert keyvault.throttled - 3 == 2 * (1 + 2)  # the SDK's key read, then the unwrap: each tried 1 + 2 times


def test_unreachable_vault_and_foreign_challenge(keyvault, tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(KeyAccessError) as info:
        make_kms(keyvault, vault=f"https://127.0.0.1:{closed}").create_key("k")
    assert "is not reachable (the connection was refused): check the vault name" in info.value.message

    # challenge verification on (the default) against a host that is not *.vault.azure.net: no token is sent
    start = len(keyvault.requests)
    with pytest.raises(ConfigError, match="did not identify itself as Key Vault"):
        make_kms(keyvault, verify_challenge_resource=True).create_key("k")
    assert not any(r["authorized"] for r in keyvault.requests[start:])  # at most the bodiless challenge probe


def test_production_path_in_process(keyvault, azure_identity_env, monkeypatch):
    """DefaultAzureCredential, vault names and challenge verification exactly as deployed."""
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in azure_identity_env.items():
        monkeypatch.setenv(name, value)
    kms = AzureKeyVaultKms("kv1", retry_backoff_factor=0.01)
    info = kms.create_key("prod")
    assert info.details["key_id"] == "https://kv1.vault.azure.net/keys/prod"
    key, wrapped = kms.generate_data_key("prod")
    assert AzureKeyVaultKms("https://kv1.vault.azure.net").unwrap(wrapped) == key
    issued = keyvault.identity_endpoint.issued
    assert issued and issued[-1]["client_id"] == azure_identity_env["AZURE_CLIENT_ID"]
    assert issued[-1]["resource"] == "https://vault.azure.net"

    keyvault.deny("keys", "unwrapKey")
    with pytest.raises(KeyAccessError) as info:
        AzureKeyVaultKms("kv1").unwrap(wrapped)
    assert f"appid={azure_identity_env['AZURE_CLIENT_ID']}" in info.value.message
    assert "az keyvault set-policy -n kv1 --key-permissions unwrapKey" in info.value.message
    assert_clean(info.value, key.unsafe_material(), *(t["token"] for t in issued))

    with pytest.raises(KeyAccessError, match="not reachable .*check the vault name") as info:
        AzureKeyVaultKms("kv404", retry_backoff_factor=0.01).describe_key("prod")
    assert "az keyvault show -n kv404" in info.value.hint

    # the key store passphrase and other secrets as azure-secret: sources, and KeySettings for executors
    azure_secrets.set_secret("kv1", "keystore-pass", "Tr0ub4dor-from-key-vault")
    assert read_secret_source("azure-secret:kv1/keystore-pass", what="pw") == "Tr0ub4dor-from-key-vault"
    assert read_secret_source("azure-secret:https://kv1.vault.azure.net/secrets/keystore-pass",
                              what="pw") == "Tr0ub4dor-from-key-vault"
    with pytest.raises(UsageError, match="azure-secret:VAULT/NAME"):
        read_secret_source("azure-secret:just-a-name", what="pw")
    settings = KeySettings(passphrase="azure-secret:kv1/keystore-pass", azure_vault="kv1")
    assert settings.passphrase_reader()() == "Tr0ub4dor-from-key-vault"
    keyvault.allow_all()
    clear_cache()
    assert settings.keyring().unwrap([wrapped], name="dk.json") == key


# -- BigDL's AzureKeyManagementService ------------------------------------------------------------------------


def test_bigdl_azure_known_answer_and_cbc_file(keyvault, tmp_path):
    assert kms_class("AzureKeyManagementService") is AzureKeyVaultKms
    assert kms_class("bigdl-azure") is BigdlAzureKms and BigdlAzureKms.data_key_kind == "bigdl"
    make_kms(keyvault).create_key("bigdl")  # RSA-2048, as BigDL's guide creates
    version = make_kms(keyvault).describe_key("bigdl").current_version
    key_url = f"{keyvault.url}/keys/bigdl/{version}"
    (tmp_path / "primaryKey").write_text(key_url + "\n")

    # a data key exactly as BigDL makes one: 32 random bytes, RSA-OAEP (SHA-1) with the public key, base64
    raw = bytes(range(32))
    encrypted = base64.b64encode(keyvault.rsa_private_key("bigdl", version).public_key().encrypt(raw, OAEP_SHA1))
    assert len(encrypted) == 344  # the size bigdl.md gives for RSA-2048
    data_key_string = base64.b64encode(raw)
    bigdl = open_kms("bigdl-azure", primary_key_file=tmp_path / "primaryKey", **options(keyvault))
    assert bigdl.supports(WrappedKey("bigdl", "", "", encrypted))
    assert bigdl.unwrap(WrappedKey("bigdl", "", "", encrypted)).unsafe_material() == data_key_string

    # a BigDL aes/cbc/pkcs5padding file carrying that encrypted key opens through the key ring
    folder = tmp_path / "bigdl-out"
    folder.mkdir()
    with open(folder / "part-00000.csv.cbc", "wb") as raw_file, \
            BigdlCbcWriter(raw_file, DataKey(data_key_string), encrypted) as writer:
        writer.write(b"a,b\n1,2\n" * 1000)
    clear_cache()
    with files.open_decrypted(str(folder / "part-00000.csv.cbc"), keyring=KeyRing([bigdl])) as reader:
        assert reader.read() == b"a,b\n1,2\n" * 1000

    # ppml writes BigDL keys too, and refuses keys too large for BigDL's 376-character header field
    key, wrapped = bigdl.generate_data_key()
    assert len(key.unsafe_material()) == 44 and len(wrapped.wrapped) == 344
    reader = BigdlAzureKms(key_url=key_url, **options(keyvault))
    assert reader.unwrap(WrappedKey("bigdl", "", "", wrapped.wrapped)) == key
    big = make_kms(keyvault, key_size=3072)
    big.create_key("big")
    with pytest.raises(ConfigError, match="RSA-2048"):
        BigdlAzureKms(key_url=f"{keyvault.url}/keys/big", **options(keyvault)).generate_data_key()
    with pytest.raises(KeyAccessError, match="not an RSA-wrapped key"):
        bigdl.unwrap(WrappedKey("bigdl", "", "", base64.b64encode(b"x" * 32)))
    with pytest.raises(ConfigError, match="not a Key Vault key URL"):
        BigdlAzureKms(key_url="https://kv1.vault.azure.net/secrets/x")


# -- secrets --------------------------------------------------------------------------------------------------


def test_secrets_set_get_versions_and_generate(keyvault):
    opts = options(keyvault)
    url, v1 = azure_secrets.set_secret(keyvault.url, "key-pass", "first", **opts)
    assert url == keyvault.url and azure_secrets.secret_exists(keyvault.url, "key-pass", **opts) == v1
    _, v2 = azure_secrets.set_secret(keyvault.url, "key-pass", "second", **opts)
    assert azure_secrets.get_secret(keyvault.url, "key-pass", **opts) == "second"
    assert azure_secrets.get_secret(keyvault.url, "key-pass", version=v1, **opts) == "first" and v1 != v2
    assert azure_secrets.secret_exists(keyvault.url, "nope", **opts) is None
    with pytest.raises(NotFoundError, match="no secret 'nope'"):
        azure_secrets.get_secret(keyvault.url, "nope", **opts)
    assert azure_secrets.read_secret_reference(f"{keyvault.url}/secrets/key-pass/{v1}", **opts) == "first"
    with pytest.raises(UsageError):
        azure_secrets.set_secret(keyvault.url, "bad name", "x", **opts)
    passwords = {azure_secrets.generate_password(32) for _ in range(20)}
    assert len(passwords) == 20 and all(len(p) == 32 and p.replace("-", "").replace("_", "").isalnum()
                                        for p in passwords)
    with pytest.raises(ValueError):
        azure_secrets.generate_password(8)


# -- the command line ------------------------------------------------------------------------------------------


class AzureCli:
    """Runs ``ppml`` in the production configuration (see the module docstring).

    Most calls run the command line in this process (``ppml.cli.main.main(args)``: the same parsing, error
    handling and exit codes, without a second of interpreter and SDK start-up each); ``subprocess=True`` runs
    the installed entry point. Every call is checked for tracebacks and for tokens or secrets in its output.
    """

    _SCRUB = ("PPML_", "XDG_", "AZURE_", "IDENTITY_", "MSI_", "IMDS_")
    _PROXY = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")

    def __init__(self, root: Path, server, identity_env: dict[str, str], monkeypatch, capsys) -> None:
        self.root, self.server, self.monkeypatch, self.capsys = root, server, monkeypatch, capsys
        (root / "home").mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(self._SCRUB) and k.upper() not in self._PROXY}
        self.env.update(identity_env, HOME=str(root / "home"), NO_COLOR="1")
        for name in list(os.environ):
            if name not in self.env:
                monkeypatch.delenv(name)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(root)
        self.secrets: list[str] = []

    def run(self, *args, env: dict[str, str] | None = None, stdin: str | None = None, expect: int = 0,
            subprocess_: bool = False) -> subprocess.CompletedProcess:
        args = tuple(map(str, args))
        if subprocess_:
            proc = subprocess.run([str(PPML), *args], env={**self.env, **(env or {})}, cwd=self.root,
                                  input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=120)
        else:
            from ppml.cli.main import main

            clear_cache()  # a new process starts with no unwrapped keys
            with self.monkeypatch.context() as patch:
                for name, value in (env or {}).items():
                    patch.setenv(name, value)
                patch.setattr(sys, "stdin", io.StringIO(stdin or ""))
                patch.setattr(warnings, "showwarning", warnings.showwarning)  # main() installs its own
                self.capsys.readouterr()
                code = main(list(args))
                captured = self.capsys.readouterr()
            proc = subprocess.CompletedProcess(["ppml", *args], code, captured.out, captured.err)
        text = proc.stdout + proc.stderr
        assert "Traceback" not in text, proc.stderr
        issued = [t["token"] for t in self.server.identity_endpoint.issued]
        for secret in [self.server.identity_endpoint.secret, *issued, *self.secrets]:
            assert secret not in text, f"a token or secret was printed by {args}"
        assert proc.returncode == expect, (args, proc.returncode, proc.stderr)
        return proc


def test_cli_keys_end_to_end(keyvault, azure_identity_env, tmp_path, monkeypatch, capsys):
    cli = AzureCli(tmp_path, keyvault, azure_identity_env, monkeypatch, capsys)
    kv = ("--kms", "azure", "--vault", "kv1", "--key-name", "tpch")
    init = json.loads(cli.run("keys", "init", *kv, "--json", subprocess_=True).stdout)
    assert init["key"]["details"]["key_id"] == "https://kv1.vault.azure.net/keys/tpch"
    assert init["key"]["details"]["key_size"] == 3072
    v1 = init["key"]["current_version"]
    cli.run("keys", "data-key", *kv, "--out", "dk.json")
    assert stat.S_IMODE((tmp_path / "dk.json").stat().st_mode) == 0o600
    record = json.loads((tmp_path / "dk.json").read_text())
    assert record["envelope"][0]["key"] == "https://kv1.vault.azure.net/keys/tpch"
    inspected = json.loads(cli.run("keys", "inspect", "dk.json", "--json").stdout)
    assert inspected["wrapped_by"][0]["reference"] == f"azure:https://kv1.vault.azure.net/keys/tpch#v{v1}"

    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    (plain / "a.csv").write_bytes(b"id,v\n1,2\n")
    (plain / "sub" / "b.csv").write_bytes(b"k\n" * 3000)
    with_vault = {"PPML_AZURE_VAULT": "kv1"}
    cli.run("encrypt", "plain", "enc", "--data-key", "dk.json", env=with_vault)

    rotated = json.loads(cli.run("keys", "rotate", *kv, "--json").stdout)
    v2 = rotated["key"]["current_version"]
    assert v2 != v1 and len(rotated["key"]["versions"]) == 2
    report = json.loads(cli.run("rewrap", "enc", *kv, "--json").stdout)
    assert report["files"] == 3  # two parts and the folder's data-set manifest
    assert sorted(d["kind"] for d in report["details"])[-1] == "manifest"
    assert report["usage"] == {f"azure:https://kv1.vault.azure.net/keys/tpch#v{v2}": 3}

    cli.run("decrypt", "enc", "out", "--kms", "azure", env=with_vault)
    assert (tmp_path / "out" / "sub" / "b.csv").read_bytes() == (plain / "sub" / "b.csv").read_bytes()
    described = json.loads(cli.run("keys", "inspect", *kv, "--json").stdout)
    assert [v["version"] for v in described["key"]["versions"]] == [v1, v2]
    listed = json.loads(cli.run("keys", "list", "--kms", "azure", "--vault", "kv1", "--json").stdout)
    assert [k["name"] for k in listed["keys"]] == ["tpch"]
    # Retiring disables a version no file uses any more; the current version cannot be retired.
    (tmp_path / "empty").mkdir()
    current = cli.run("keys", "retire", v2, *kv, "--scan", "empty", "--confirm", "tpch", expect=2)
    assert "current version" in current.stderr
    retired = json.loads(cli.run("keys", "retire", v1, *kv, "--scan", "enc", "--scan", ".", "--confirm", "tpch",
                                 "--json", expect=7).stdout or "{}")  # dk.json still names v1
    assert retired == {}
    cli.run("rewrap", "dk.json", *kv)
    retired = json.loads(cli.run("keys", "retire", v1, *kv, "--scan", "enc", "--scan", ".", "--confirm", "tpch",
                                 "--json").stdout)
    assert {v["version"]: v["state"] for v in retired["key"]["versions"]} == {v1: "disabled", v2: "enabled"}
    rekeyed = json.loads(cli.run("rekey", "enc", *kv, "--out-data-key", "dk2.json", "--json", env=with_vault).stdout)
    assert rekeyed["files"] == 2
    cli.run("decrypt", "enc", "out-rekeyed", env=with_vault)
    assert (tmp_path / "out-rekeyed" / "a.csv").read_bytes() == b"id,v\n1,2\n"

    unset = cli.run("decrypt", "enc", "out3", expect=5)
    assert "no 'azure' key management service is configured" in unset.stderr  # no vault given: none contacted
    cli.run("keys", "data-key", "--kms", "azure", "--out", "x.json", expect=2)  # no --vault, no PPML_AZURE_VAULT
    keyvault.deny("keys", "unwrapKey")
    denied = cli.run("decrypt", "enc", "out2", env=with_vault, expect=5, subprocess_=True)
    assert f"appid={azure_identity_env['AZURE_CLIENT_ID']}" in denied.stderr
    assert "lacks the 'unwrapKey' key permission on Key Vault https://kv1.vault.azure.net" in denied.stderr
    assert "az keyvault set-policy -n kv1 --key-permissions unwrapKey" in denied.stderr
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_cli_secrets_and_key_store_passphrase_from_key_vault(keyvault, azure_identity_env, tmp_path, monkeypatch,
                                                               capsys):
    cli = AzureCli(tmp_path, keyvault, azure_identity_env, monkeypatch, capsys)
    vault = ("--vault", "kv1")
    generated = json.loads(cli.run("azure", "secret", "generate", "keystore-pass", *vault, "--json",
                                   subprocess_=True).stdout)
    assert generated["length"] == 32
    assert generated["id"].startswith("https://kv1.vault.azure.net/secrets/keystore-pass/")
    password = keyvault.secrets["keystore-pass"][-1].value
    cli.secrets = [password]

    cli.run("azure", "secret", "get", "keystore-pass", *vault, "--out", "pw.txt")
    assert (tmp_path / "pw.txt").read_text() == password
    assert stat.S_IMODE((tmp_path / "pw.txt").stat().st_mode) == 0o600
    cli.run("azure", "secret", "set", "key-pass", *vault, stdin="from-stdin-value\n")
    assert keyvault.secrets["key-pass"][-1].value == "from-stdin-value"
    again = cli.run("azure", "secret", "generate", "keystore-pass", *vault, expect=6)
    assert "already exists" in again.stderr and "--force" in again.stderr
    missing = cli.run("azure", "secret", "get", "nothing-here", *vault, expect=3)
    assert "no secret 'nothing-here'" in missing.stderr
    printed = cli.run("azure", "secret", "get", "key-pass", *vault)  # stdout is not a terminal here
    assert printed.stdout == "from-stdin-value"
    usage = cli.run("azure", "secret", "set", "x", *vault, "--value", "literal", expect=2)
    assert "No such option" in usage.stderr

    # a new key store whose passphrase only Key Vault holds
    cli.run("keys", "init", "--keystore", "ks.json",
            env={"PPML_KEYSTORE_PASSWORD_SOURCE": "azure-secret:kv1/keystore-pass"})
    from ppml.keys.local import LocalKms

    assert LocalKms(tmp_path / "ks.json", password).list_keys()[0].name == "default"


def test_cli_bigdl_azure_key_files(keyvault, azure_identity_env, tmp_path, monkeypatch, capsys):
    """BigDL's AzureKeyManagementService options: a primary-key file holding the Key Vault key URL."""
    cli = AzureCli(tmp_path, keyvault, azure_identity_env, monkeypatch, capsys)
    info = AzureKeyVaultKms("kv1", key_size=2048).create_key("bigdl")
    (tmp_path / "primaryKey").write_text(f"https://kv1.vault.azure.net/keys/bigdl/{info.current_version}\n")
    bigdl = ("--kms", "AzureKeyManagementService", "--bigdl-key", "primaryKey")
    cli.run("keys", "data-key", *bigdl, "--out", "bigdl-dk.json")
    envelope = json.loads((tmp_path / "bigdl-dk.json").read_text())["envelope"]
    assert envelope[0]["kms"] == "bigdl-azure" and len(base64.b64decode(envelope[0]["wrapped"])) == 344
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "t.csv").write_bytes(b"a,b\n1,2\n" * 100)
    cli.run("encrypt", "plain", "for-bigdl", "--mode", "aes/cbc/pkcs5padding", "--data-key", "bigdl-dk.json", *bigdl)
    assert (tmp_path / "for-bigdl" / "t.csv.cbc").exists() and (tmp_path / "for-bigdl" / ".meta").exists()
    cli.run("decrypt", "for-bigdl", "back", *bigdl)
    assert (tmp_path / "back" / "t.csv").read_bytes() == (tmp_path / "plain" / "t.csv").read_bytes()


def test_every_spelling_of_a_key_url_has_one_canonical_form():
    """The key broker matches policies against this form, so no spelling can slip past a policy."""
    kms = AzureKeyVaultKms("https://kv1.vault.azure.net", credential=object())
    for spelling in (" https://KV1.vault.azure.net//keys/TPCH/ ", "https://kv1.vault.azure.net/keys/Tpch",
                     "https://kv1.VAULT.azure.net/keys/tpch/"):
        assert kms.canonical_key(spelling) == "https://kv1.vault.azure.net/keys/tpch"
    assert kms.canonical_key("not a url") == "not a url"
