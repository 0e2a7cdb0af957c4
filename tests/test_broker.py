"""The key broker end to end: a real ``ppml broker serve`` process (uvicorn, TLS) and the ``broker`` KMS client.

Simulated evidence is enabled here (the broker's configuration names it and a policy accepts it), which is
what lets these tests reach every policy branch; the real evidence types have their own broker tests.
Every refusal is checked for its status, its reason in the audit log, and the absence of key material.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from broker_harness import BrokerProcess, quiet_simulation  # noqa: F401 - autouse

from ppml.attest.evidence import binding_digest
from ppml.crypto.envelope import WrappedKey
from ppml.errors import ConfigError, KeyAccessError
from ppml.keys.broker_client import BrokerKms, attestation_records, clear_releases, release_counters
from ppml.keys.broker_protocol import EphemeralKey, release_info
from ppml.keys.keyring import KeyRing

MRENCLAVE = "ab" * 32
POLICIES = [
    {"name": "dev", "keys": ["local:tpch*"], "release_lifetime": "10m",
     "allow": [{"type": "simulated", "claims": {"app": "tpch"}}]},
    {"name": "enclave", "keys": ["local:other"], "release_lifetime": "2s",
     "allow": [{"type": "simulated", "claims": {"mrenclave": MRENCLAVE}}]},
]
APP_CLAIMS = {"app": "tpch"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    process = BrokerProcess(tmp_path_factory.mktemp("broker"), policies=POLICIES,
                            limits={"max_request_bytes": 64 * 1024})
    with process:
        yield process


def _client(broker, claims=APP_CLAIMS) -> BrokerKms:
    return BrokerKms(broker.url, attester="simulated", attester_settings={"claims": claims},
                     ca=str(broker.pki.ca_path), caller="pytest")


def _nonce(client: httpx.Client) -> bytes:
    response = client.post("/v1/nonce")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    return base64.b64decode(response.json()["nonce"])


def _request(nonce: bytes, public_key: bytes, wrapped: list[WrappedKey], *, claims=APP_CLAIMS,
             binding: bytes | None = None) -> dict:
    report = binding if binding is not None else binding_digest(nonce, public_key)
    return {"nonce": base64.b64encode(nonce).decode(), "public_key": base64.b64encode(public_key).decode(),
            "evidence": {"type": "simulated", "report_data": report.hex(), "claims": claims},
            "keys": [w.to_json() for w in wrapped]}


def _last(broker, n=1) -> list[dict]:
    return broker.audit_entries()[-n:]


def _assert_no_key_material(text: str, *keys) -> None:
    for key in keys:
        raw = key.unsafe_material()
        for form in (raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
            assert form not in text


def test_release_through_the_client_matches_the_key_and_is_audited(broker):
    key, wrapped = broker.keystore.generate_data_key("tpch")
    client = _client(broker)
    before = release_counters().get("requests", 0)
    assert client.unwrap(wrapped) == key
    assert client.unwrap(wrapped) == key  # cached in this process: no second attestation
    assert release_counters()["requests"] == before + 1
    client.close()
    # Provenance records name the claims the broker verified and its policy required, not the evidence alone.
    record = next(r for r in attestation_records() if r["broker"] == broker.url)
    assert record["claims"] == {"app": "tpch"} and record["evidence_type"] == "simulated"
    entry = _last(broker)[0]
    assert entry["decision"] == "allow" and entry["policy"] == "dev" and entry["key"] == "local:tpch"
    assert entry["evidence"]["simulated"] is True and entry["caller"]["declared_name"] == "pytest"
    assert entry["key_id"] == key.key_id
    _assert_no_key_material(broker.audit_log.read_text() + broker.stderr, key)
    assert "SIMULATED" in broker.stderr


def test_the_answer_is_sealed_to_the_requests_ephemeral_key(broker):
    key, wrapped = broker.keystore.generate_data_key("tpch")
    ephemeral, other = EphemeralKey(), EphemeralKey()
    with broker.client() as http:
        nonce = _nonce(http)
        response = http.post("/v1/keys/release", json=_request(nonce, ephemeral.public_bytes, [wrapped]))
    assert response.status_code == 200
    _assert_no_key_material(response.text, key)
    assert response.json()["keys"][0]["claims"] == APP_CLAIMS
    sealed = base64.b64decode(response.json()["keys"][0]["sealed"])
    assert ephemeral.open(sealed, release_info(nonce, wrapped), reference="t") == key
    with pytest.raises(KeyAccessError, match="does not open"):
        other.open(sealed, release_info(nonce, wrapped), reference="t")
    _, second = broker.keystore.generate_data_key("tpch")
    with pytest.raises(KeyAccessError, match="does not open"):  # the answer cannot be passed off as another key's
        ephemeral.open(sealed, release_info(nonce, second), reference="t")


def test_a_replayed_nonce_is_refused(broker):
    key, wrapped = broker.keystore.generate_data_key("tpch")
    ephemeral = EphemeralKey()
    with broker.client() as http:
        body = _request(_nonce(http), ephemeral.public_bytes, [wrapped])
        assert http.post("/v1/keys/release", json=body).status_code == 200
        replay = http.post("/v1/keys/release", json=body)
    assert replay.status_code == 403 and replay.json()["error"]["code"] == "nonce"
    entry = _last(broker)[0]
    assert entry["decision"] == "deny" and "already used" in entry["reason"] and entry["keys"] == ["local:tpch"]
    _assert_no_key_material(replay.text, key)


def test_a_nonce_the_broker_never_issued_is_refused(broker):
    _, wrapped = broker.keystore.generate_data_key("tpch")
    with broker.client() as http:
        response = http.post("/v1/keys/release", json=_request(b"\x01" * 32, EphemeralKey().public_bytes, [wrapped]))
    assert response.status_code == 403 and response.json()["error"]["code"] == "nonce"


def test_evidence_bound_to_another_public_key_is_refused(broker):
    key, wrapped = broker.keystore.generate_data_key("tpch")
    mine, attackers = EphemeralKey(), EphemeralKey()
    with broker.client() as http:
        nonce = _nonce(http)
        body = _request(nonce, attackers.public_bytes, [wrapped], binding=binding_digest(nonce, mine.public_bytes))
        response = http.post("/v1/keys/release", json=body)
    assert response.status_code == 403 and response.json()["error"]["code"] == "attestation"
    entry = _last(broker)[0]
    assert entry["decision"] == "deny" and "not bound to this request" in entry["reason"]
    assert entry["evidence"]["type"] == "simulated" and len(entry["evidence"]["digest"]) == 64
    _assert_no_key_material(response.text + broker.audit_log.read_text(), key)


def test_wrong_measurement_and_debug_are_refused_by_policy(broker):
    key, wrapped = broker.keystore.generate_data_key("other")
    with pytest.raises(KeyAccessError, match=r"denied local:other#v1: policy enclave: claim mrenclave does not "
                                             "match") as refused:
        _client(broker, {"mrenclave": "cd" * 32}).unwrap(wrapped)
    # The caller learns which requirement fell short; the values the policy expects stay in the audit log.
    assert MRENCLAVE not in str(refused.value) and "cd" * 32 not in str(refused.value)
    assert f"claim mrenclave is '{'cd' * 32}', expected '{MRENCLAVE}'" in _last(broker)[0]["reason"]
    assert _last(broker)[0]["policy"] == "enclave"
    with pytest.raises(KeyAccessError, match="debug"):
        _client(broker, {"mrenclave": MRENCLAVE, "debug": True}).unwrap(wrapped)
    assert "debug" in _last(broker)[0]["reason"]
    assert _client(broker, {"mrenclave": MRENCLAVE}).unwrap(wrapped) == key
    _assert_no_key_material(broker.audit_log.read_text(), key)


def test_an_unknown_key_is_refused(broker, tmp_path):
    from broker_harness import make_keystore

    foreign = make_keystore(tmp_path / "foreign", "secret")
    key, wrapped = foreign.generate_data_key("secret")
    with pytest.raises(KeyAccessError, match="no policy governs the key local:secret: unknown key"):
        _client(broker).unwrap(wrapped)
    entry = _last(broker)[0]
    assert entry["decision"] == "deny" and entry["code"] == "unknown-key"
    forged = WrappedKey("local", "tpch", "1", b"\x01" + b"\x00" * 59)  # governed, but of another key store
    with pytest.raises(KeyAccessError, match="cannot unwrap this key; its audit log records why") as refused:
        _client(broker).unwrap(forged)
    # The broker's key store path is the operator's business: in the audit log, not in the answer.
    store = str(broker.keystore.path)
    assert store not in str(refused.value)
    assert _last(broker)[0]["code"] == "unwrap" and store in _last(broker)[0]["reason"]
    _assert_no_key_material(broker.audit_log.read_text(), key)


def test_one_request_answers_each_key_on_its_own(broker):
    allowed, wrapped_allowed = broker.keystore.generate_data_key("tpch")
    _, wrapped_denied = broker.keystore.generate_data_key("other")
    ephemeral = EphemeralKey()
    with broker.client() as http:
        nonce = _nonce(http)
        answers = http.post("/v1/keys/release",
                            json=_request(nonce, ephemeral.public_bytes, [wrapped_allowed, wrapped_denied])).json()["keys"]
    assert [a["status"] for a in answers] == ["released", "denied"]
    sealed = base64.b64decode(answers[0]["sealed"])
    assert ephemeral.open(sealed, release_info(nonce, wrapped_allowed), reference="t") == allowed
    assert [e["decision"] for e in _last(broker, 2)] == ["allow", "deny"]


def test_an_oversized_request_is_refused_before_parsing(broker):
    with broker.client() as http:
        response = http.post("/v1/keys/release", content=b"{" + b" " * (70 * 1024) + b"}",
                             headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "too-large"
    entry = _last(broker)[0]
    assert entry["decision"] == "deny" and "exceeds 65536 bytes" in entry["reason"]


def test_malformed_requests_are_refused_and_audited(broker):
    with broker.client() as http:
        for body in (b"not json", b"[]", json.dumps({"nonce": "!!", "public_key": "", "keys": []}).encode()):
            response = http.post("/v1/keys/release", content=body)
            assert response.status_code == 400, body
    assert all(e["decision"] == "deny" and e["code"] == "malformed" for e in _last(broker, 3))


def test_there_is_no_admin_operation_over_http(broker):
    with broker.client() as http:
        assert http.get("/v1/health").json()["status"] == "ok"
        for method, path in (("GET", "/v1/keys"), ("PUT", "/v1/policies/dev"), ("DELETE", "/v1/keys/release"),
                             ("POST", "/v1/admin/reload"), ("GET", "/v1/keys/release")):
            assert http.request(method, path).status_code in (404, 405), (method, path)


def test_plain_http_is_refused_by_the_client_and_not_served(broker):
    with pytest.raises(ConfigError, match="https://"):
        BrokerKms(broker.url.replace("https", "http"), attester="simulated")
    with pytest.raises(httpx.HTTPError):
        httpx.get(broker.url.replace("https", "http") + "/v1/health", timeout=5)


def test_an_untrusted_broker_certificate_is_refused(broker):
    _, wrapped = broker.keystore.generate_data_key("tpch")
    client = BrokerKms(broker.url, attester="simulated", attester_settings={"claims": APP_CLAIMS})
    with pytest.raises(KeyAccessError, match="cannot reach the key broker"):
        client.unwrap(wrapped)


def test_an_expired_release_is_attested_for_again(broker):
    key, wrapped = broker.keystore.generate_data_key("other")  # policy "enclave": 2 s release lifetime
    client = _client(broker, {"mrenclave": MRENCLAVE})
    before = release_counters().get("requests", 0)
    assert client.unwrap(wrapped) == key and client.unwrap(wrapped) == key
    assert release_counters()["requests"] == before + 1
    time.sleep(2.1)
    assert client.unwrap(wrapped) == key
    assert release_counters()["requests"] == before + 2


def test_key_ring_goes_to_the_broker_and_does_not_outlive_the_release(broker):
    key, wrapped = broker.keystore.generate_data_key("tpch")
    ring = KeyRing([_client(broker)])
    assert ring.unwrap([wrapped], name="f") == key
    clear_releases()
    before = release_counters()["requests"]
    assert ring.unwrap([wrapped], name="f") == key  # the ring did not keep it: the broker was asked again
    assert release_counters()["requests"] == before + 1


def test_rate_limit_and_graceful_shutdown(tmp_path):
    process = BrokerProcess(tmp_path / "b", limits={"requests_per_second": 1, "burst": 3})
    with process:
        with process.client() as http:
            statuses = [http.post("/v1/nonce").status_code for _ in range(6)]
            assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
            assert int(http.post("/v1/nonce").headers["retry-after"]) >= 1
        assert process.stop() == 0
    entries = process.audit_entries()
    assert entries[0]["event"] == "start" and entries[-1]["event"] == "stop"
    assert f"audit log head {entries[-1]['hash']}" in process.stderr


def test_cli_decrypts_with_keys_only_from_the_broker(broker, tmp_path, monkeypatch):
    from ppml.cli.main import main
    from ppml.io.files import encrypt

    key, wrapped = broker.keystore.generate_data_key("tpch")
    (tmp_path / "plain.csv").write_bytes(b"a,b\n1,2\n")
    encrypt(str(tmp_path / "plain.csv"), str(tmp_path / "enc.csv.ppml"), key=key, envelope=(wrapped,))
    for name in ("PPML_KEYSTORE", "PPML_KEYSTORE_PASSWORD", "PPML_KEYSTORE_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PPML_BROKER_URL", broker.url)
    monkeypatch.setenv("PPML_BROKER_CA", str(broker.pki.ca_path))
    monkeypatch.setenv("PPML_BROKER_ATTESTER", "simulated")
    monkeypatch.setenv("PPML_BROKER_ATTESTER_SETTINGS", json.dumps({"claims": {"app": "tpch"}}))
    assert main(["decrypt", str(tmp_path / "enc.csv.ppml"), str(tmp_path / "out.csv")]) == 0
    assert (tmp_path / "out.csv").read_bytes() == b"a,b\n1,2\n"
    assert _last(broker)[0]["decision"] == "allow" and _last(broker)[0]["key_id"] == key.key_id
    monkeypatch.setenv("PPML_BROKER_ATTESTER_SETTINGS", json.dumps({"claims": {"app": "other"}}))
    clear_releases()
    assert main(["decrypt", str(tmp_path / "enc.csv.ppml"), str(tmp_path / "out2.csv")]) == 5
    assert not (tmp_path / "out2.csv").exists() and _last(broker)[0]["decision"] == "deny"


def test_config_paths_are_relative_to_the_file(tmp_path):
    import yaml

    from ppml.broker.config import load_config
    from ppml.errors import ConfigError as Config

    folder = tmp_path / "conf"
    process = BrokerProcess(folder)  # writes TLS files, policies and a key store below folder
    config = yaml.safe_load(process.config_path.read_text())
    config["kms"] = [{"backend": "local", "keystore": "keys/keystore.json", "passphrase": "file:keys/passphrase"},
                     {"backend": "pkcs11", "token": "t", "pin": "env:PIN", "module": "libsofthsm2.so"}]
    config["tls"] = {"certificate": "tls/server.pem", "private_key": "tls/server.key"}
    process.config_path.write_text(yaml.safe_dump(config))
    loaded = load_config(process.config_path)
    assert loaded.kms[0] == {"backend": "local", "keystore": str(folder / "keys" / "keystore.json"),
                             "passphrase": f"file:{folder / 'keys' / 'passphrase'}"}
    assert loaded.kms[1]["module"] == "libsofthsm2.so" and loaded.kms[1]["pin"] == "env:PIN"
    assert loaded.certificate == str(folder / "tls" / "server.pem")
    for change, message in (({"tls": {}}, "only speaks HTTPS"), ({"policies": []}, "no key is released"),
                            ({"audit_log": None}, "audit_log"), ({"limits": {"rate": 1}}, "limits"),
                            ({"limits": {"requests_per_second": 0}}, "must be a positive number"),
                            ({"listen_port": 1}, "unknown field")):
        process.config_path.write_text(yaml.safe_dump({**config, **change}))
        with pytest.raises(Config, match=message):
            load_config(process.config_path)


def test_config_names_verifiers_by_their_evidence_type(tmp_path):
    import yaml

    from ppml.broker.config import load_config
    from ppml.errors import ConfigError as Config

    process = BrokerProcess(tmp_path / "conf")
    config = yaml.safe_load(process.config_path.read_text())
    process.config_path.write_text(yaml.safe_dump({**config, "verifiers": {"Simulated": {}, "SGX": {}}}))
    # Evidence names its type "simulated": the broker must find that verifier, and warn that it is enabled.
    assert load_config(process.config_path).verifiers == {"simulated": {}, "sgx": {}}
    for verifiers, message in (({"sgx": {}, "SGX": {}}, "sgx is named twice"),
                               ({"sev": {}}, "unknown evidence type 'sev'")):
        process.config_path.write_text(yaml.safe_dump({**config, "verifiers": verifiers}))
        with pytest.raises(Config, match=message):
            load_config(process.config_path)


def test_report_data_must_be_exactly_the_binding_then_zeros(broker):
    _, wrapped = broker.keystore.generate_data_key("tpch")
    ephemeral = EphemeralKey()
    with broker.client() as http:
        nonce = _nonce(http)
        padded = binding_digest(nonce, ephemeral.public_bytes) + b"\x01" + bytes(31)
        response = http.post("/v1/keys/release", json=_request(nonce, ephemeral.public_bytes, [wrapped], binding=padded))
    assert response.status_code == 403 and "not bound to this request" in response.json()["error"]["message"]


def test_a_low_order_public_key_is_refused_before_anything_is_released(broker):
    _, wrapped = broker.keystore.generate_data_key("tpch")
    with broker.client() as http:
        nonce = _nonce(http)
        response = http.post("/v1/keys/release", json=_request(nonce, bytes(32), [wrapped]))
    assert response.status_code == 400 and "low-order point" in response.json()["error"]["message"]
    assert _last(broker)[0]["decision"] == "deny" and _last(broker)[0]["code"] == "malformed"


def test_the_broker_cache_makes_kms_calls_follow_distinct_keys(broker):
    def kms_unwraps() -> int:
        with broker.client() as http:
            return http.get("/v1/health").json()["counters"].get("kms_unwraps", 0)

    _, wrapped = broker.keystore.generate_data_key("tpch")
    before = kms_unwraps()
    for _ in range(3):
        clear_releases()
        _client(broker).unwrap(wrapped)
    assert kms_unwraps() == before + 1


def test_overlapping_policies_must_all_allow_and_nonces_expire(tmp_path):
    """A broad policy cannot override a strict one; a nonce used after its lifetime is refused; with
    key_cache 0 every release asks the KMS."""
    policies = [{"name": "broad", "keys": ["local:*"], "allow": [{"type": "simulated"}]},
                {"name": "strict", "keys": ["LOCAL:TPCH"], "release_lifetime": "1m",
                 "allow": [{"type": "simulated", "claims": {"app": "tpch", "stage": "prod"}}]}]
    process = BrokerProcess(tmp_path / "b", policies=policies, limits={"nonce_lifetime": 3}, extra={"key_cache": 0})
    with process:
        key, wrapped = process.keystore.generate_data_key("tpch")
        with pytest.raises(KeyAccessError, match="policy strict: claim stage is missing"):
            _client(process, {"app": "tpch"}).unwrap(wrapped)
        client = _client(process, {"app": "tpch", "stage": "prod"})
        assert client.unwrap(wrapped) == key
        entry = _last(process)[0]
        assert entry["policy"] == "broad, strict" and entry["lifetime"] == 60
        clear_releases()
        assert client.unwrap(wrapped) == key
        ephemeral = EphemeralKey()
        with process.client() as http:
            nonce = _nonce(http)
            time.sleep(5.1)  # past the lifetime and the 2 s allowed for clock skew
            late = http.post("/v1/keys/release", json=_request(nonce, ephemeral.public_bytes, [wrapped],
                                                               claims={"app": "tpch", "stage": "prod"}))
            assert late.status_code == 403 and late.json()["error"]["code"] == "nonce"
            assert http.get("/v1/health").json()["counters"]["kms_unwraps"] == 2


def test_broker_init_makes_a_folder_that_serves(tmp_path, monkeypatch):
    """`ppml broker init` output runs as is: TLS from its own CA, the local key store, the policy it wrote."""
    from broker_harness import PASSPHRASE, free_port, make_keystore

    from ppml.broker.config import load_config
    from ppml.cli.main import main

    keystore = make_keystore(tmp_path / "keys", "tpch")
    port = free_port()
    monkeypatch.setenv("PPML_KEYSTORE", str(keystore.path))
    monkeypatch.setenv("PPML_KEYSTORE_PASSWORD", PASSPHRASE)
    assert main(["broker", "init", str(tmp_path / "dev"), "--key-name", "tpch", "--port", str(port),
                 "--passphrase-source", f"file:{tmp_path / 'keys' / 'passphrase'}", "--simulated"]) == 0
    assert main(["broker", "init", str(tmp_path / "dev"), "--key-name", "tpch"]) == 6  # never overwrites
    assert (tmp_path / "dev" / "tls" / "broker-key.pem").stat().st_mode & 0o077 == 0
    process = BrokerProcess.configured(tmp_path / "dev" / "broker.yaml", port=port,
                                       ca_path=tmp_path / "dev" / "tls" / "ca.pem")
    key, wrapped = keystore.generate_data_key("tpch")
    with process:
        client = BrokerKms(process.url, attester="simulated", attester_settings={"claims": {"app": "my-job"}},
                           ca=str(process.pki.ca_path))
        assert client.unwrap(wrapped) == key
        import ssl

        strict = ssl.create_default_context(cafile=str(process.pki.ca_path))
        strict.verify_flags |= ssl.VERIFY_X509_STRICT  # on by default from Python 3.13
        assert httpx.get(f"{process.url}/v1/health", verify=strict).status_code == 200
    assert process.audit_entries()[1]["decision"] == "allow"
    # Without --simulated the folder still loads, and its placeholder SGX rule releases nothing.
    assert main(["broker", "init", str(tmp_path / "prod"), "--key-name", "tpch"]) == 0
    config = load_config(tmp_path / "prod" / "broker.yaml")
    assert "simulated" not in config.verifiers and [r.type for r in config.policies[0].rules] == ["sgx"]
    assert PASSPHRASE not in (tmp_path / "dev" / "broker.yaml").read_text()
    # Names that could break or extend the YAML are refused; a half-initialised folder is never overwritten.
    for bad in ('a", "local:other', "x #y", "a: b"):
        assert main(["broker", "init", str(tmp_path / "bad"), "--key-name", bad]) == 2
    (tmp_path / "partial" / "tls").mkdir(parents=True)
    (tmp_path / "partial" / "tls" / "broker-key.pem").write_text("keep me")
    assert main(["broker", "init", str(tmp_path / "partial"), "--key-name", "tpch"]) == 6
    assert (tmp_path / "partial" / "tls" / "broker-key.pem").read_text() == "keep me"
    assert not (tmp_path / "partial" / "tls" / "ca.pem").exists()
    assert main(["broker", "init", str(tmp_path / "src"), "--passphrase-source", "-"]) == 2


def _scaffold_keystore(tmp_path) -> tuple[str, str]:
    """A key store for ``create_broker_folder`` (which wraps the audit key with it), and its passphrase source."""
    from broker_harness import make_keystore

    make_keystore(tmp_path / "keys", "tpch")
    return str(tmp_path / "keys" / "keystore.json"), f"file:{tmp_path / 'keys' / 'passphrase'}"


def test_broker_init_certificates_pass_strict_checks_and_name_the_clients_address(tmp_path):
    from cryptography import x509

    from ppml.broker.scaffold import create_broker_folder

    store, source = _scaffold_keystore(tmp_path)
    made = create_broker_folder(tmp_path / "b", key_name="tpch", keystore=store, passphrase=source,
                                hosts=["broker.internal"], listen="0.0.0.0")
    assert made.url == "https://broker.internal:8443"
    server = x509.load_pem_x509_certificates((tmp_path / "b" / "tls" / "broker.pem").read_bytes())[0]
    assert server.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert server.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    specific = create_broker_folder(tmp_path / "c", key_name="tpch", keystore=store, passphrase=source,
                                    listen="::1")
    assert specific.url == "https://[::1]:8443"
    alt = x509.load_pem_x509_certificates((tmp_path / "c" / "tls" / "broker.pem").read_bytes())[0].extensions
    assert "::1" in {str(ip) for ip in alt.get_extension_for_class(x509.SubjectAlternativeName).value
                     .get_values_for_type(x509.IPAddress)}


def test_every_rule_broker_init_writes_or_suggests_pins_a_workload(tmp_path):
    """The placeholder rule and each commented example, once uncommented, is a valid rule: none pins only a
    platform (an SGX signer alone, a TDX firmware, an MAA attestation type)."""
    import re

    import yaml

    from ppml.attest.policy import load_policy
    from ppml.broker.scaffold import create_broker_folder

    store, source = _scaffold_keystore(tmp_path)
    made = create_broker_folder(tmp_path / "b", key_name="tpch", keystore=store, passphrase=source)
    text = made.policy.read_text()
    load_policy(made.policy)
    # Uncomment the suggested rules (`  # - type: ...` and the `  #   field: ...` lines under them).
    suggested = re.sub(r"(?m)^  # (- type:|  [a-z0-9_]+:)", r"  \1", text)
    document = yaml.safe_load(suggested)
    assert [rule["type"] for rule in document["allow"]] == ["sgx", "tdx", "maa"]
    for index, rule in enumerate(document["allow"]):
        single = tmp_path / f"rule-{index}.yaml"
        single.write_text(yaml.safe_dump({**document, "allow": [rule]}))
        load_policy(single)
    sgx = tmp_path / "sgx-signer.yaml"
    sgx.write_text(yaml.safe_dump({**document, "allow": [{"type": "sgx", "mrsigner": "ab" * 32, "isv_prod_id": 1}]}))
    load_policy(sgx)


def test_the_audit_log_is_signed_published_and_a_rewrite_is_refused(tmp_path, capsys):
    """Every entry is signed with the audit key the KMS holds, each start entry records the previous head,
    heads go to the sink; deleting the allow entries and recomputing the chain fails `audit verify --key`
    and stops a restarted broker."""
    from broker_harness import recompute_chain

    from ppml.broker.audit_key import public_key_path
    from ppml.cli.main import main

    heads = tmp_path / "heads.jsonl"
    process = BrokerProcess(tmp_path / "b", policies=POLICIES,
                            extra={"audit_heads": {"sink": f"file:{heads}", "interval": "1s"}, "replica": "r0"})
    key, wrapped = process.keystore.generate_data_key("tpch")
    for _ in range(2):  # two runs: the second start entry records the first run's head
        with process:
            assert _client(process).unwrap(wrapped) == key
            clear_releases()
    entries = process.audit_entries()
    starts = [e for e in entries if e["event"] == "start"]
    assert len(starts) == 2 and starts[0]["previous_head"] is None and starts[0]["key_id"] == starts[1]["key_id"]
    assert starts[1]["previous_head"] == {"seq": starts[1]["seq"] - 1, "hash": starts[1]["prev"]}
    assert "sig" in entries[-1] and {json.loads(x)["replica"] for x in heads.read_text().splitlines()} == {"r0"}
    pub = str(public_key_path(process.audit_key))
    verify = ["broker", "audit", "verify", str(process.audit_log), "--key", pub, "--heads", f"file:{heads}"]
    capsys.readouterr()
    assert main(verify) == 0
    assert "every entry signed by audit key" in capsys.readouterr().err
    original = process.audit_log.read_text()
    rewritten = recompute_chain(original.splitlines(), lambda e: e.get("decision") != "allow")
    process.audit_log.write_text("\n".join(rewritten) + "\n")
    assert main(verify) == 4
    assert main(["broker", "audit", "verify", str(process.audit_log)]) == 0  # without the key, the chain looks fine
    with pytest.raises(RuntimeError, match="signature does not verify"):
        process.start()
    process.audit_log.write_text(original)
