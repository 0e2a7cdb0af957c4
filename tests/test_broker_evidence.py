"""The key broker end to end with each real evidence type: MAA tokens, SGX/TDX quotes, TPM quotes, and a
primary key held in an HSM.

Each broker is a real ``ppml broker serve`` process (``broker_harness.BrokerProcess``). Every refusal is
checked for its HTTP status (or the client's KeyAccessError), its reason in the broker's audit log, and the
absence of key material in the response, the audit log and the broker's stderr.

The real SGX/TDX sample quotes cannot carry this test's nonce in their report data, so through the broker
they always end in a binding refusal once verified; what the verifier decides about them (genuine, tampered,
expired collateral, another TEE) is still visible in which refusal comes and in the audit entry's identity.
Policy decisions on the real quotes are checked with ``ppml broker policy check``, which does not bind.
"""

# The fixtures are imported from swtpm and softhsm and then requested by name (pytest's way).
# ruff: noqa: F811

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import warnings
from datetime import datetime, timezone

import jwt
import pytest
from attestation_data import requires_attestation_data, vector
from broker_harness import BrokerProcess
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from softhsm import pkcs11_settings, softhsm, softhsm_token  # noqa: F401
from swtpm import tpm_env  # noqa: F401

from ppml.attest.evidence import binding_digest
from ppml.cli.main import main
from ppml.crypto.envelope import WrappedKey
from ppml.errors import KeyAccessError, PpmlInsecureWarning
from ppml.keys.broker_client import BrokerKms, clear_releases
from ppml.keys.broker_protocol import EphemeralKey, release_info
from ppml.keys.kms import open_kms

SAMPLE_AT = "2025-07-15T00:00:00Z"  # inside the SGX/TDX sample collateral's validity (attestation_data.py)


@pytest.fixture(autouse=True)
def _fresh_releases():
    clear_releases()  # the client's process-wide release cache must not answer for the broker
    yield
    clear_releases()


# -- helpers ------------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _release(broker: BrokerProcess, wrapped: WrappedKey, make_evidence, *, public_key: bytes | None = None):
    """Drive the protocol by hand: nonce, ephemeral key, evidence from ``make_evidence(nonce, public_key)``.

    Returns ``(response, nonce, ephemeral)``. ``public_key`` overrides the key sent in the request (the
    evidence is still made for the ephemeral key's public half).
    """
    ephemeral = EphemeralKey()
    with broker.client() as http:
        response = http.post("/v1/nonce")
        assert response.status_code == 200, response.text
        nonce = base64.b64decode(response.json()["nonce"])
        body = {"nonce": base64.b64encode(nonce).decode(),
                "public_key": base64.b64encode(public_key or ephemeral.public_bytes).decode(),
                "evidence": make_evidence(nonce, ephemeral.public_bytes),
                "keys": [wrapped.to_json()], "caller": "pytest-evidence"}
        return http.post("/v1/keys/release", json=body), nonce, ephemeral


def _last(broker: BrokerProcess) -> dict:
    return broker.audit_entries()[-1]


def _assert_no_key_material(text: str, *keys) -> None:
    for key in keys:
        raw = key.unsafe_material()
        for form in (raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
            assert form not in text


NOT_VERIFIED = "evidence did not verify; the broker's audit log records why (evidence "


def _assert_refused(broker: BrokerProcess, response, key, *, status: int, code: str, reason: str,
                    evidence_type: str, reference: str = "local:tpch", public: str = NOT_VERIFIED) -> dict:
    """The request was refused with ``status``/``code``; the caller was told ``public`` and not ``reason``
    (unless they are the same), and the audit log's last entry says ``reason``."""
    if status == 200:  # refused per key (policy): the request succeeded, the key was denied
        assert response.status_code == 200, response.text
        answer = response.json()["keys"][0]
        assert answer["status"] == "denied" and answer["code"] == code and "sealed" not in answer
        shown = answer["reason"]
    else:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code, error
        shown = error["message"]
    assert public in shown, shown
    if reason not in public:
        assert reason not in shown, shown  # what the verifier or policy found stays in the audit log
    entry = _last(broker)
    assert entry["event"] == "release" and entry["decision"] == "deny", entry
    assert entry["code"] == code and reason in entry["reason"], entry
    # Refused as a whole (evidence did not verify or bind): one entry naming the keys; per key otherwise.
    assert entry.get("key", reference) == reference and entry.get("keys", [reference]) == [reference]
    assert entry["evidence"]["type"] == evidence_type
    assert entry["caller"]["declared_name"] == "pytest-evidence"
    _assert_no_key_material(response.text + broker.audit_log.read_text() + broker.stderr, key)
    return entry


# -- 1. Microsoft Azure Attestation tokens ------------------------------------------------------------------

ISSUER = "https://ppmltest.eus.attest.azure.net"
KID = "ppml-broker-test-rsa"
MAA_MRENCLAVE = "5c" * 32
MAA_POLICY = {"name": "maa-tpch", "keys": ["local:tpch"], "release_lifetime": "10m",
              "allow": [{"type": "maa", "claims": {"x-ms-attestation-type": "sgx",
                                                    "x-ms-sgx-mrenclave": MAA_MRENCLAVE}}]}


@pytest.fixture(scope="module")
def maa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def maa_broker(tmp_path_factory, maa_key):
    folder = tmp_path_factory.mktemp("maa-broker")
    jwks = {"keys": [{**RSAAlgorithm.to_jwk(maa_key.public_key(), as_dict=True), "kid": KID}]}
    (folder / "jwks.json").write_text(json.dumps(jwks))
    process = BrokerProcess(folder / "broker", policies=[MAA_POLICY],
                            verifiers={"maa": {"jwks": str(folder / "jwks.json"), "issuers": [ISSUER]}})
    with process:
        yield process


def maa_claims(binding: bytes | None, **overrides) -> dict:
    now = int(time.time())
    claims = {"iss": ISSUER, "iat": now - 60, "nbf": now - 60, "exp": now + 8 * 3600,
              "x-ms-attestation-type": "sgx", "x-ms-sgx-is-debuggable": False, "x-ms-sgx-mrenclave": MAA_MRENCLAVE,
              "x-ms-sgx-mrsigner": "2c" * 32, "x-ms-sgx-product-id": 1, "x-ms-sgx-svn": 1, "x-ms-ver": "1.0"}
    if binding is not None:
        claims["x-ms-sgx-ehd"] = b64url(binding)
    claims.update(overrides)
    return claims


def hand_made_token(header: dict, claims: dict, sign_with=None) -> str:
    """A JWT built by hand (PyJWT refuses to make the malicious ones)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = b64url(sign_with(signing_input.encode())) if sign_with else ""
    return f"{signing_input}.{signature}"


def _maa(token: str) -> dict:
    return {"type": "maa", "token": token}


def test_maa_token_bound_to_the_request_releases_the_key(maa_broker, maa_key):
    key, wrapped = maa_broker.keystore.generate_data_key("tpch")

    def evidence(nonce, public_key):
        claims = maa_claims(binding_digest(nonce, public_key))
        return _maa(jwt.encode(claims, maa_key, algorithm="RS256", headers={"kid": KID}))

    response, nonce, ephemeral = _release(maa_broker, wrapped, evidence)
    assert response.status_code == 200, response.text
    answer = response.json()["keys"][0]
    assert answer["status"] == "released" and answer["expires_in"] == 600 and "simulated" not in answer
    sealed = base64.b64decode(answer["sealed"])
    assert ephemeral.open(sealed, release_info(nonce, wrapped), reference="t") == key
    entry = _last(maa_broker)
    assert entry["decision"] == "allow" and entry["policy"] == "maa-tpch" and entry["key"] == "local:tpch"
    assert entry["key_id"] == key.key_id and entry["evidence"]["simulated"] is False
    assert entry["evidence"]["identity"] == f"maa sgx iss={ISSUER} sgx-mrenclave={MAA_MRENCLAVE[:16]}…"
    _assert_no_key_material(response.text + maa_broker.audit_log.read_text() + maa_broker.stderr, key)
    assert "SIMULATED" not in maa_broker.stderr


def _stranger() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(private_key: rsa.RSAPrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


# Each case: a token maker (signing key, binding) -> token; the expected HTTP status, code and reason.
MAA_REFUSALS = {
    "expired": (
        lambda key, binding: jwt.encode(maa_claims(binding, exp=int(time.time()) - 3600), key, algorithm="RS256",
                                        headers={"kid": KID}),
        403, "attestation", "the MAA token expired at"),
    "alg-none": (
        lambda key, binding: hand_made_token({"alg": "none", "typ": "JWT", "kid": KID}, maa_claims(binding)),
        403, "attestation", "the MAA token is unsigned (alg none)"),
    "hs256-key-confusion": (
        lambda key, binding: hand_made_token(
            {"alg": "HS256", "typ": "JWT", "kid": KID}, maa_claims(binding),
            sign_with=lambda data: hmac.new(_pem(key), data, hashlib.sha256).digest()),
        403, "attestation", "uses the symmetric algorithm HS256"),
    "unknown-kid": (
        lambda key, binding: jwt.encode(maa_claims(binding), _stranger(), algorithm="RS256",
                                        headers={"kid": "rotated-key"}),
        403, "attestation", "signing key kid='rotated-key' is not in the configured jwks"),
    "signed-by-another-key": (
        lambda key, binding: jwt.encode(maa_claims(binding), _stranger(), algorithm="RS256", headers={"kid": KID}),
        403, "attestation", f"signature does not verify with key kid='{KID}'"),
    "issuer-not-allowed": (
        lambda key, binding: jwt.encode(maa_claims(binding, iss="https://evil.example"), key, algorithm="RS256",
                                        headers={"kid": KID}),
        403, "attestation", "issuer 'https://evil.example' is not an accepted issuer"),
    "wrong-mrenclave": (
        lambda key, binding: jwt.encode(maa_claims(binding, **{"x-ms-sgx-mrenclave": "cd" * 32}), key,
                                        algorithm="RS256", headers={"kid": KID}),
        200, "policy", f"claim x-ms-sgx-mrenclave is '{'cd' * 32}', expected '{MAA_MRENCLAVE}'"),
    "debuggable": (
        lambda key, binding: jwt.encode(maa_claims(binding, **{"x-ms-sgx-is-debuggable": True}), key,
                                        algorithm="RS256", headers={"kid": KID}),
        200, "policy", "maa evidence comes from a debug TEE"),
}
# What the caller is told instead, where it differs from the default (NOT_VERIFIED).
MAA_PUBLIC = {"wrong-mrenclave": "policy maa-tpch: claim x-ms-sgx-mrenclave does not match",
              "debuggable": "policy maa-tpch: maa evidence comes from a debug TEE"}


@pytest.mark.parametrize("case", list(MAA_REFUSALS))
def test_maa_refusals_are_audited_with_their_reason(maa_broker, maa_key, case):
    make_token, status, code, reason = MAA_REFUSALS[case]
    key, wrapped = maa_broker.keystore.generate_data_key("tpch")
    response, _, _ = _release(maa_broker, wrapped,
                              lambda nonce, public_key: _maa(make_token(maa_key, binding_digest(nonce, public_key))))
    entry = _assert_refused(maa_broker, response, key, status=status, code=code, reason=reason, evidence_type="maa",
                            public=MAA_PUBLIC.get(case, NOT_VERIFIED))
    if code == "policy":  # verified, then judged: the policy that refused is named
        assert entry["policy"] == "maa-tpch" and entry["evidence"]["identity"].startswith("maa sgx")
    else:  # refused before any policy saw it
        assert entry["policy"] is None and "identity" not in entry["evidence"]
    assert "BEGIN PUBLIC KEY" not in response.text + entry["reason"]


def test_maa_token_bound_to_another_public_key_is_refused(maa_broker, maa_key):
    key, wrapped = maa_broker.keystore.generate_data_key("tpch")
    attacker = EphemeralKey()

    def evidence(nonce, public_key):  # genuine token for the caller's key, replayed with the attacker's key
        return _maa(jwt.encode(maa_claims(binding_digest(nonce, public_key)), maa_key, algorithm="RS256",
                               headers={"kid": KID}))

    response, _, _ = _release(maa_broker, wrapped, evidence, public_key=attacker.public_bytes)
    entry = _assert_refused(maa_broker, response, key, status=403, code="attestation",
                            reason="the evidence is not bound to this request", evidence_type="maa",
                            public="the evidence is not bound to this request")
    assert entry["evidence"]["identity"].startswith("maa sgx")  # the token itself verified


# -- 2. SGX and TDX quotes (real Intel samples) -------------------------------------------------------------

SGX_MRENCLAVE_OFFSET, SGX_MRSIGNER_OFFSET = 48 + 64, 48 + 128


def _quote_evidence(kind: str, quote: bytes | None = None) -> dict:
    quote = quote if quote is not None else vector(f"{kind}_quote").read_bytes()
    return {"type": kind, "quote": base64.b64encode(quote).decode(),
            "collateral": json.loads(vector(f"{kind}_quote_collateral.json").read_text())}


def _sgx_rule(**overrides) -> dict:
    quote = vector("sgx_quote").read_bytes()
    rule = {"type": "sgx", "mrenclave": quote[SGX_MRENCLAVE_OFFSET:SGX_MRENCLAVE_OFFSET + 32].hex(),
            "mrsigner": quote[SGX_MRSIGNER_OFFSET:SGX_MRSIGNER_OFFSET + 32].hex(),
            "tcb_status": ["UpToDate", "ConfigurationAndSWHardeningNeeded"]}
    return {**rule, **overrides}


def _sgx_policy(**overrides) -> dict:
    return {"name": "sgx-tpch", "keys": ["local:tpch"], "release_lifetime": "10m", "allow": [_sgx_rule(**overrides)]}


@pytest.fixture(scope="module")
def dcap_broker(tmp_path_factory):
    """SGX and TDX verifiers, evidence verified as of a time inside the sample collateral's validity."""
    process = BrokerProcess(tmp_path_factory.mktemp("dcap-broker"), policies=[_sgx_policy()],
                            verifiers={"sgx": {}, "tdx": {}}, extra={"verification_time": SAMPLE_AT})
    with process:
        yield process


@pytest.fixture(scope="module")
def dcap_now_broker(tmp_path_factory):
    """An SGX-only verifier at the current time (the sample collateral expired in 2025)."""
    process = BrokerProcess(tmp_path_factory.mktemp("dcap-now-broker"), policies=[_sgx_policy()],
                            verifiers={"sgx": {}})
    with process:
        yield process


@requires_attestation_data
def test_an_sgx_quote_bound_to_the_request_releases_the_key(tmp_path):
    """A quote of the test platform (tests/sgx_platform.py, trusted through the verifier's root_ca) carrying
    the request's binding: verified in full once, then by its signature, and the key is released each time."""
    from sgx_platform import SgxPlatform

    platform = SgxPlatform.from_sample(vector("sgx_quote"), vector("sgx_quote_collateral.json"))
    (tmp_path / "root.der").write_bytes(platform.root_der)
    process = BrokerProcess(tmp_path / "b", policies=[_sgx_policy()],
                            verifiers={"sgx": {"root_ca": str(tmp_path / "root.der")}})
    with process:
        for _ in range(3):
            key, wrapped = process.keystore.generate_data_key("tpch")
            response, nonce, ephemeral = _release(process, wrapped, lambda n, k: platform.evidence(binding_digest(n, k)))
            assert response.status_code == 200, response.text
            sealed = base64.b64decode(response.json()["keys"][0]["sealed"])
            assert ephemeral.open(sealed, release_info(nonce, wrapped), reference="t") == key
            entry = _last(process)
            assert entry["decision"] == "allow" and entry["evidence"]["identity"].startswith("sgx mrenclave=33d8736d")
    assert "instead of Intel's: for test platforms only" in process.stderr


@requires_attestation_data
def test_genuine_sgx_quote_verifies_but_is_refused_as_not_bound(dcap_broker):
    key, wrapped = dcap_broker.keystore.generate_data_key("tpch")
    response, _, _ = _release(dcap_broker, wrapped, lambda nonce, public_key: _quote_evidence("sgx"))
    entry = _assert_refused(dcap_broker, response, key, status=403, code="attestation",
                            reason="the evidence is not bound to this request", evidence_type="sgx",
                            public="the evidence is not bound to this request")
    # It got as far as the binding: the quote, its signatures and the collateral verified at the pinned time.
    assert entry["evidence"]["identity"] == "sgx mrenclave=33d8736db756ed49… mrsigner=815f42f11cf64430…"
    assert entry["evidence"]["simulated"] is False
    assert "verified as of 2025-07-15" in dcap_broker.stderr  # the broker says it is not using the clock


@requires_attestation_data
def test_sgx_quote_with_one_flipped_byte_is_refused_by_verification(dcap_broker):
    key, wrapped = dcap_broker.keystore.generate_data_key("tpch")
    quote = bytearray(vector("sgx_quote").read_bytes())
    quote[SGX_MRENCLAVE_OFFSET + 5] ^= 0x01  # inside the report body's MRENCLAVE
    response, _, _ = _release(dcap_broker, wrapped, lambda nonce, public_key: _quote_evidence("sgx", bytes(quote)))
    entry = _assert_refused(dcap_broker, response, key, status=403, code="attestation",
                            reason="sgx quote refused: the quote signature check failed", evidence_type="sgx")
    assert "not bound" not in entry["reason"] and "identity" not in entry["evidence"]


@requires_attestation_data
def test_tdx_quote_verifies_on_a_broker_that_accepts_tdx_but_is_not_bound(dcap_broker):
    key, wrapped = dcap_broker.keystore.generate_data_key("tpch")
    response, _, _ = _release(dcap_broker, wrapped, lambda nonce, public_key: _quote_evidence("tdx"))
    entry = _assert_refused(dcap_broker, response, key, status=403, code="attestation",
                            reason="the evidence is not bound to this request", evidence_type="tdx",
                            public="the evidence is not bound to this request")
    assert entry["evidence"]["identity"].startswith("tdx mrtd=91eb2b44d141d4ec")


@requires_attestation_data
def test_tdx_quote_is_refused_by_a_broker_without_a_tdx_verifier(dcap_now_broker):
    key, wrapped = dcap_now_broker.keystore.generate_data_key("tpch")
    response, _, _ = _release(dcap_now_broker, wrapped, lambda nonce, public_key: _quote_evidence("tdx"))
    entry = _assert_refused(dcap_now_broker, response, key, status=403, code="attestation",
                            reason="this broker does not accept tdx evidence (it accepts: sgx)", evidence_type="tdx",
                            public="this broker does not accept tdx evidence")
    assert entry["policy"] is None


@requires_attestation_data
def test_genuine_sgx_quote_is_refused_now_for_its_expired_collateral(dcap_now_broker):
    if datetime.now(timezone.utc) < datetime(2025, 7, 20, tzinfo=timezone.utc):  # pragma: no cover
        pytest.skip("the sample collateral is still valid")
    key, wrapped = dcap_now_broker.keystore.generate_data_key("tpch")
    response, _, _ = _release(dcap_now_broker, wrapped, lambda nonce, public_key: _quote_evidence("sgx"))
    entry = _assert_refused(dcap_now_broker, response, key, status=403, code="attestation",
                            reason="sgx quote refused: collateral not valid at", evidence_type="sgx")
    assert "(expired)" in entry["reason"] and "not bound" not in entry["reason"]
    assert f"at {datetime.now(timezone.utc):%Y-}" in entry["reason"]  # verified at the broker's clock


@requires_attestation_data
@pytest.mark.parametrize("policy, evidence_kind, code, decision, reason", [
    (_sgx_policy, "sgx", 0, "allow", "sgx rule 1 of policy sgx-tpch met"),
    (lambda: _sgx_policy(mrenclave="ee" * 32), "sgx", 1, "deny", "mrenclave is '33d8736db756ed49"),
    (lambda: _sgx_policy(tcb_status="UpToDate"), "sgx", 1, "deny",
     "TCB status is 'ConfigurationAndSWHardeningNeeded', expected 'UpToDate'"),
    (_sgx_policy, "tdx", 1, "deny", "policy sgx-tpch does not accept tdx evidence (it accepts: sgx)"),
], ids=["allow", "wrong-mrenclave", "tcb-status", "tdx-for-sgx-policy"])
def test_policy_check_on_the_real_quotes(tmp_path, capsys, policy, evidence_kind, code, decision, reason):
    import yaml

    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy()))
    (tmp_path / "evidence.json").write_text(json.dumps(_quote_evidence(evidence_kind)))
    capsys.readouterr()
    assert main(["broker", "policy", "check", str(tmp_path / "policy.yaml"), str(tmp_path / "evidence.json"),
                 "--at", SAMPLE_AT]) == code
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["kind"] == "broker.policy.check" and document["decision"] == decision
    assert document["policy"] == "sgx-tpch" and any(reason in r for r in document["reasons"]), document["reasons"]
    assert document["evidence"]["type"] == evidence_kind and document["verified_at"].startswith("2025-07-15T00:00")
    if decision == "deny":
        assert "denies this evidence" in captured.err


@requires_attestation_data
def test_policy_check_at_the_current_time_fails_verification(tmp_path, capsys):
    import yaml

    if datetime.now(timezone.utc) < datetime(2025, 7, 20, tzinfo=timezone.utc):  # pragma: no cover
        pytest.skip("the sample collateral is still valid")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(_sgx_policy()))
    (tmp_path / "evidence.json").write_text(json.dumps(_quote_evidence("sgx")))
    capsys.readouterr()
    assert main(["broker", "policy", "check", str(tmp_path / "policy.yaml"), str(tmp_path / "evidence.json")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "collateral not valid at" in captured.err


# -- 3. TPM quotes (swtpm) ----------------------------------------------------------------------------------

WORKLOAD_EVENT = hashlib.sha256(b"ppml broker test workload").digest()
OS_PCR = 11  # a PCR policies accept as naming a workload; it cannot be reset, so its value is read


@pytest.fixture(scope="module")
def tpm_broker(tmp_path_factory, tpm_env):
    tpm_env.extend_pcr(OS_PCR, WORKLOAD_EVENT)
    expected = tpm_env.read_pcr(OS_PCR)
    policy = {"name": "vtpm-tpch", "keys": ["local:tpch"], "release_lifetime": "10m",
              "allow": [{"type": "tpm", "pcrs": {"sha256": {OS_PCR: expected}}, "allow_without_tee": True}]}
    process = BrokerProcess(tmp_path_factory.mktemp("tpm-broker"), policies=[policy],
                            verifiers={"tpm": {"ca_certificates": [str(tpm_env.ca_path)]}})
    with process:
        yield process, expected


def test_tpm_quote_releases_the_key_until_the_measured_state_changes(tpm_broker, tpm_env):
    tpm_broker, expected = tpm_broker
    key, wrapped = tpm_broker.keystore.generate_data_key("tpch")
    client = BrokerKms(tpm_broker.url, attester="tpm",
                       attester_settings=tpm_env.attester_settings(pcrs=[0, 1, 2, 3, 4, 5, 6, 7, OS_PCR]),
                       ca=str(tpm_broker.pki.ca_path), caller="pytest-evidence")
    try:
        assert client.unwrap(wrapped) == key
        entry = _last(tpm_broker)
        assert entry["decision"] == "allow" and entry["policy"] == "vtpm-tpch" and entry["key"] == "local:tpch"
        assert entry["evidence"]["type"] == "tpm" and entry["evidence"]["identity"] == "tpm ak=ppml-test-vm"
        assert entry["key_id"] == key.key_id

        tpm_env.extend_pcr(OS_PCR, hashlib.sha256(b"something else ran").digest())  # the measured state changed
        clear_releases()
        with pytest.raises(KeyAccessError, match=rf"denied local:tpch#v1: policy vtpm-tpch: PCR sha256:{OS_PCR} "
                                                 "does not match") as info:
            client.unwrap(wrapped)
        assert expected not in str(info.value)
    finally:
        client.close()
    entry = _last(tpm_broker)
    assert entry["decision"] == "deny" and entry["code"] == "policy" and entry["policy"] == "vtpm-tpch"
    assert f"PCR sha256:{OS_PCR} is '" in entry["reason"] and f"expected '{expected}'" in entry["reason"]
    assert expected not in entry["reason"].split("expected")[0]  # it names the changed value, not the old one
    assert entry["evidence"]["identity"] == "tpm ak=ppml-test-vm"
    _assert_no_key_material(str(info.value) + tpm_broker.audit_log.read_text() + tpm_broker.stderr, key)


# -- 4. A primary key held in an HSM (SoftHSM2) -------------------------------------------------------------


def test_hsm_held_primary_key_is_released_by_the_broker(tmp_path, softhsm, softhsm_token, pkcs11_settings):
    import os

    hsm = open_kms("pkcs11", **pkcs11_settings)
    hsm.create_key("tpch")
    key, wrapped = hsm.generate_data_key("tpch")
    reference = f"pkcs11:{softhsm_token.label}/tpch"
    assert f"{wrapped.kms}:{wrapped.key}" == reference
    policy = {"name": "hsm-dev", "keys": [reference], "release_lifetime": "10m",
              "allow": [{"type": "simulated", "claims": {"app": "tpch"}}]}
    process = BrokerProcess(tmp_path / "broker", policies=[policy], verifiers={"simulated": {}},
                            kms=[{"backend": "pkcs11", **pkcs11_settings}])
    # SoftHSM2 in the broker must read this process's token directory: it inherits SOFTHSM2_CONF.
    assert os.environ["SOFTHSM2_CONF"] == str(softhsm.conf) and process.env["SOFTHSM2_CONF"] == str(softhsm.conf)
    from ppml.broker.config import load_config

    configured = load_config(process.config_path).kms[0]
    assert configured["pin"] == pkcs11_settings["pin"] and configured["module"] == pkcs11_settings["module"]
    assert configured["token"] == softhsm_token.label

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PpmlInsecureWarning)
        with process:
            client = BrokerKms(process.url, attester="simulated", attester_settings={"claims": {"app": "tpch"}},
                               ca=str(process.pki.ca_path), caller="pytest-evidence")
            try:
                assert client.unwrap(wrapped) == key
                entry = _last(process)
                assert entry["decision"] == "allow" and entry["key"] == reference and entry["policy"] == "hsm-dev"
                assert entry["version"] == wrapped.version and entry["key_id"] == key.key_id
                assert entry["evidence"]["simulated"] is True

                clear_releases()
                other = BrokerKms(process.url, attester="simulated", attester_settings={"claims": {"app": "x"}},
                                  ca=str(process.pki.ca_path), caller="pytest-evidence")
                with pytest.raises(KeyAccessError, match=f"denied {reference}#v1: policy hsm-dev: claim app does not "
                                                         "match"):
                    other.unwrap(wrapped)
                other.close()
            finally:
                client.close()
    entry = process.audit_entries()[-2]  # the last is the broker's "stop"
    assert entry["decision"] == "deny" and entry["key"] == reference and entry["code"] == "policy"
    assert process.audit_entries()[0]["kms"] == ["pkcs11"]
    text = process.audit_log.read_text() + process.stderr
    _assert_no_key_material(text, key)
    assert softhsm_token.pin not in text  # the PIN was read from its file, never logged
