"""Microsoft Azure Attestation token verification (``ppml.attest.maa``).

Real tokens (an SGX token from 2021 with its issuer's public key; an SEV-SNP token whose keys are gone)
check compatibility with what MAA issues; tokens signed in the test by a fresh key check every refusal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from attestation_data import (
    MAA_2021_ISSUER,
    MAA_2021_TIME,
    MAA_SEVSNP_ISSUER,
    requires_attestation_data,
    vector,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ppml.attest import Evidence, binding_digest, open_verifier
from ppml.attest.maa import MaaVerifier
from ppml.errors import AttestationError, ConfigError, PpmlInsecureWarning

ISSUER = "https://ppmltest.eus.attest.azure.net"
KID, EC_KID = "ppml-test-rsa", "ppml-test-ec"
NOW = datetime(2025, 7, 15, 12, tzinfo=timezone.utc)
MRENCLAVE = "b779202618becb636768e5d902f28d524222735fafb539ea9ba07c3fc171a1c2"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks(rsa_key, ec_key) -> dict:
    return {"keys": [{**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": KID},
                     {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": EC_KID}]}


@pytest.fixture(scope="module")
def verifier(jwks) -> MaaVerifier:
    return MaaVerifier(jwks=jwks, issuers=[ISSUER])


def sgx_claims(**overrides) -> dict:
    now = int(NOW.timestamp())
    claims = {"iss": ISSUER, "iat": now - 60, "nbf": now - 60, "exp": now + 8 * 3600,
              "x-ms-attestation-type": "sgx", "x-ms-sgx-is-debuggable": False, "x-ms-sgx-mrenclave": MRENCLAVE,
              "x-ms-sgx-mrsigner": "2c" * 32, "x-ms-sgx-product-id": 1, "x-ms-sgx-svn": 1, "x-ms-ver": "1.0"}
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def sign(key, claims: dict, *, alg: str = "RS256", kid: str = KID) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def maa(token: str) -> Evidence:
    return Evidence("maa", {"token": token})


def unsigned_token(header: dict, claims: dict, sign_with=None) -> str:
    """A JWT built by hand (PyJWT refuses to make the malicious ones)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = b64url(sign_with(signing_input.encode())) if sign_with else ""
    return f"{signing_input}.{signature}"


# --- the real 2021 SGX token -------------------------------------------------------------------------------


@requires_attestation_data
def test_real_2021_token_verifies_with_its_weak_key_allowed():
    verifier = MaaVerifier(jwks=vector("maa-sgx-2021-jwks.json"), issuers=[MAA_2021_ISSUER], min_rsa_bits=1024)
    token = vector("maa-sgx-2021.jwt").read_text()
    with pytest.warns(PpmlInsecureWarning, match="1024-bit RSA key"):  # loud whenever the floor is lowered
        result = verifier.verify(maa(token), at=MAA_2021_TIME)
    claims = result.claims
    assert claims["x-ms-sgx-mrenclave"] == MRENCLAVE
    assert claims["x-ms-sgx-mrsigner"] == "2c1a44952ae8207135c6c29b75b8c029372ee94b677e15c20bd42340f10d41aa"
    assert (claims["x-ms-sgx-product-id"], claims["x-ms-sgx-svn"]) == (1, 1)
    assert claims["issuer"] == MAA_2021_ISSUER and claims["attestation_type"] == "sgx"
    assert claims["debug"] is False and not result.warnings
    ehd = base64.urlsafe_b64decode(claims["x-ms-sgx-ehd"] + "==")
    assert result.report_data == ehd and claims["report_data"] == ehd.hex()
    assert b'"kty":"EC"' in ehd.replace(b" ", b"")  # the enclave's public key, as held data
    assert result.identity == f"maa sgx iss={MAA_2021_ISSUER} sgx-mrenclave=b779202618becb63…"
    json.dumps(result.to_json())


@requires_attestation_data
def test_real_2021_token_refused_by_default_for_its_key_size():
    verifier = MaaVerifier(jwks=vector("maa-sgx-2021-jwks.json"), issuers=[MAA_2021_ISSUER])
    with pytest.raises(AttestationError, match="1024-bit RSA key.*min_rsa_bits=2048"):
        verifier.verify(maa(vector("maa-sgx-2021.jwt").read_text()), at=MAA_2021_TIME)


@requires_attestation_data
@pytest.mark.filterwarnings("ignore::jwt.InsecureKeyLengthWarning")
@pytest.mark.parametrize("at, issuers, message", [
    (datetime(2021, 5, 6, 5, tzinfo=timezone.utc), [MAA_2021_ISSUER], "expired at 2021-05-06T03:58:36Z"),
    (datetime(2021, 5, 5, 12, tzinfo=timezone.utc), [MAA_2021_ISSUER], "not valid before 2021-05-05T19:58:36Z"),
    (MAA_2021_TIME, ["https://shareduks.uks.attest.azure.net"], "issuer 'https://sharedwus.wus.attest.azure.net' "
                                                                "is not an accepted issuer"),
], ids=["expired", "not-yet-valid", "wrong-issuer"])
def test_real_2021_token_refusals(at, issuers, message):
    verifier = MaaVerifier(jwks=vector("maa-sgx-2021-jwks.json"), issuers=issuers, min_rsa_bits=1024)
    with pytest.raises(AttestationError, match=message):
        verifier.verify(maa(vector("maa-sgx-2021.jwt").read_text()), at=at)


@requires_attestation_data
def test_real_sevsnp_token_refused_for_its_unknown_signing_key():
    token = vector("maa-sevsnp-token.jwt").read_text()
    kid = jwt.get_unverified_header(token)["kid"]
    verifier = MaaVerifier(jwks=vector("maa-sgx-2021-jwks.json"), issuers=[MAA_SEVSNP_ISSUER])
    with pytest.raises(AttestationError, match=f"kid='{kid}' is not in the configured jwks"):
        verifier.verify(maa(token), at=datetime(2025, 4, 8, 12, tzinfo=timezone.utc))


@requires_attestation_data
def test_sevsnp_claims_resigned_by_a_test_key(rsa_key, verifier):
    # The real SEV-SNP claims, signed by the test key: how the verifier reads SEV-SNP tokens.
    claims = jwt.decode(vector("maa-sevsnp-token.jwt").read_text(), options={"verify_signature": False})
    claims.update(iss=ISSUER, exp=int(NOW.timestamp()) + 3600, nbf=int(NOW.timestamp()) - 60)
    claims["x-ms-sevsnpvm-is-debuggable"] = True
    result = verifier.verify(maa(sign(rsa_key, claims)), at=NOW)
    assert result.claims["attestation_type"] == "sevsnpvm"
    assert result.claims["debug"] is True and "debug" in result.warnings[0]
    assert result.claims["x-ms-sevsnpvm-launchmeasurement"].startswith("02c3b0d5bf1d256f")
    assert result.report_data is None and result.claims["report_data"] is None
    assert result.identity.endswith("sevsnpvm-launchmeasurement=02c3b0d5bf1d256f…")


# --- tokens signed by a test key ---------------------------------------------------------------------------


def test_valid_test_token(rsa_key, verifier):
    result = verifier.verify(maa(sign(rsa_key, sgx_claims())), at=NOW)
    assert result.type == "maa" and result.claims["x-ms-sgx-mrenclave"] == MRENCLAVE
    assert result.claims["issuer"] == ISSUER and result.claims["debug"] is False
    assert result.report_data is None


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256"])
def test_rsa_algorithms_accepted(rsa_key, verifier, alg):
    assert verifier.verify(maa(sign(rsa_key, sgx_claims(), alg=alg)), at=NOW).claims["issuer"] == ISSUER


def test_ecdsa_token_accepted_and_key_type_pinned(rsa_key, ec_key, verifier):
    assert verifier.verify(maa(sign(ec_key, sgx_claims(), alg="ES256", kid=EC_KID)), at=NOW)
    with pytest.raises(AttestationError, match="says ES256 but key kid='ppml-test-rsa' is RSA"):
        verifier.verify(maa(sign(ec_key, sgx_claims(), alg="ES256", kid=KID)), at=NOW)
    with pytest.raises(AttestationError, match="says RS256 but key kid='ppml-test-ec' is EC"):
        verifier.verify(maa(sign(rsa_key, sgx_claims(), kid=EC_KID)), at=NOW)


def test_x5c_certificate_jwks(rsa_key):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ppml test MAA signer")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(rsa_key.public_key())
            .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
            .sign(rsa_key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    jwks = {"keys": [{"kty": "RSA", "kid": KID, "x5c": [base64.b64encode(der).decode()]}]}
    result = MaaVerifier(jwks=jwks, issuers=ISSUER).verify(maa(sign(rsa_key, sgx_claims())), at=NOW)
    assert result.claims["issuer"] == ISSUER
    other = RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key(), as_dict=True)
    with pytest.raises(ConfigError, match="x5c certificate and its n/e differ"):
        MaaVerifier(jwks={"keys": [{**jwks["keys"][0], "n": other["n"], "e": other["e"]}]}, issuers=[ISSUER])


def test_expired_token_refused_after_the_leeway(rsa_key, verifier):
    exp = int(NOW.timestamp()) - 30
    token = sign(rsa_key, sgx_claims(exp=exp))
    assert verifier.verify(maa(token), at=NOW)  # within the 60 s leeway
    with pytest.raises(AttestationError, match="expired at .*pass --at"):
        verifier.verify(maa(token), at=NOW + timedelta(seconds=31))


def test_nbf_in_the_future_refused(rsa_key, verifier):
    token = sign(rsa_key, sgx_claims(nbf=int(NOW.timestamp()) + 600))
    with pytest.raises(AttestationError, match="not valid before"):
        verifier.verify(maa(token), at=NOW)


def test_missing_exp_refused(rsa_key, verifier):
    with pytest.raises(AttestationError, match="no numeric 'exp'"):
        verifier.verify(maa(sign(rsa_key, sgx_claims(exp=None))), at=NOW)
    with pytest.raises(AttestationError, match="no numeric 'exp'"):
        verifier.verify(maa(sign(rsa_key, sgx_claims(exp=True))), at=NOW)


@pytest.mark.parametrize("claim, value", [("exp", float("nan")), ("exp", float("inf")), ("nbf", float("nan")),
                                          ("nbf", float("-inf"))])
def test_times_that_are_not_finite_numbers_refused(rsa_key, verifier, claim, value):
    """NaN compares false with every time, so an ``exp`` of NaN would never expire and an ``nbf`` never bite."""
    token = sign(rsa_key, sgx_claims(**{claim: value}))
    with pytest.raises(AttestationError, match=f"'{claim}' is not a finite number"):
        verifier.verify(maa(token), at=NOW + timedelta(days=3650))


def test_wrong_issuer_refused(rsa_key, verifier):
    with pytest.raises(AttestationError, match="issuer 'https://evil.example' is not an accepted issuer"):
        verifier.verify(maa(sign(rsa_key, sgx_claims(iss="https://evil.example"))), at=NOW)
    with pytest.raises(AttestationError, match="issuer None"):
        verifier.verify(maa(sign(rsa_key, sgx_claims(iss=None))), at=NOW)


def test_alg_none_refused(verifier):
    token = unsigned_token({"alg": "none", "typ": "JWT", "kid": KID}, sgx_claims())
    with pytest.raises(AttestationError, match="unsigned \\(alg none\\)"):
        verifier.verify(maa(token), at=NOW)


def test_hmac_with_the_public_key_as_secret_refused(rsa_key, verifier):
    # The classic key-confusion attack: HS256 "signed" with the verifier's own RSA public key (PEM) as secret.
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
        token = unsigned_token({"alg": alg, "typ": "JWT", "kid": KID}, sgx_claims(),
                               sign_with=lambda data, digest=digest: hmac.new(pem, data, digest).digest())
        with pytest.raises(AttestationError, match=f"symmetric algorithm {alg}") as info:
            verifier.verify(maa(token), at=NOW)
        assert "BEGIN PUBLIC KEY" not in str(info.value) and token not in str(info.value)


def test_unlisted_algorithm_refused(rsa_key, verifier):
    with pytest.raises(AttestationError, match="algorithm 'PS512' is not accepted"):
        verifier.verify(maa(sign(rsa_key, sgx_claims(), alg="PS512")), at=NOW)


def test_unknown_or_missing_kid_refused(rsa_key, verifier):
    with pytest.raises(AttestationError, match="kid='rotated-key' is not in the configured jwks"):
        verifier.verify(maa(sign(rsa_key, sgx_claims(), kid="rotated-key")), at=NOW)
    with pytest.raises(AttestationError, match="kid=None"):
        verifier.verify(maa(jwt.encode(sgx_claims(), rsa_key, algorithm="RS256")), at=NOW)


def test_critical_header_extensions_refused(rsa_key, verifier):
    token = jwt.encode(sgx_claims(), rsa_key, algorithm="RS256", headers={"kid": KID, "crit": ["exp"]})
    with pytest.raises(AttestationError, match="critical header extensions"):
        verifier.verify(maa(token), at=NOW)


def test_tampered_payload_refused(rsa_key, verifier):
    header, payload, signature = sign(rsa_key, sgx_claims()).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["x-ms-sgx-mrenclave"] = "00" * 32
    tampered = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(AttestationError, match="signature does not verify with key kid='ppml-test-rsa'"):
        verifier.verify(maa(tampered), at=NOW)


def test_signature_by_another_key_refused(verifier):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AttestationError, match="signature does not verify"):
        verifier.verify(maa(sign(stranger, sgx_claims())), at=NOW)


@pytest.mark.parametrize("payload, message", [
    ({}, "lacks the field 'token'"),
    ({"token": "   "}, "lacks the field 'token'"),
    ({"token": "not-a-jwt"}, "not a JWT"),
    ({"token": "e30.e30.!!!!"}, "not a JWT \\(its signature is not base64url"),
    ({"token": "W10.e30.AAAA"}, "not a JWT \\(its header is not a JSON object"),
    ({"token": "a.b.c.d"}, "not a JWT \\(it does not have three"),
])
def test_malformed_evidence_refused(verifier, payload, message):
    with pytest.raises(AttestationError, match=message):
        verifier.verify(Evidence("maa", payload), at=NOW)


def test_debug_claim(rsa_key, verifier):
    result = verifier.verify(maa(sign(rsa_key, sgx_claims(**{"x-ms-sgx-is-debuggable": True}))), at=NOW)
    assert result.claims["debug"] is True and result.warnings
    with pytest.raises(AttestationError, match="not true or false"):
        verifier.verify(maa(sign(rsa_key, sgx_claims(**{"x-ms-sgx-is-debuggable": "false"}))), at=NOW)
    # Azure confidential VMs nest the flag; a token without any flag says nothing (policies then refuse it).
    cvm = sgx_claims(**{"x-ms-isolation-tee": {"x-ms-sevsnpvm-is-debuggable": True}})
    del cvm["x-ms-sgx-is-debuggable"]
    assert verifier.verify(maa(sign(rsa_key, cvm)), at=NOW).claims["debug"] is True
    silent = sgx_claims()
    del silent["x-ms-sgx-is-debuggable"]
    assert verifier.verify(maa(sign(rsa_key, silent)), at=NOW).claims["debug"] is None


def test_binding_through_enclave_held_data(rsa_key, verifier):
    nonce, public_key = os.urandom(32), os.urandom(32)
    binding = binding_digest(nonce, public_key)
    result = verifier.verify(maa(sign(rsa_key, sgx_claims(**{"x-ms-sgx-ehd": b64url(binding)}))), at=NOW)
    assert result.report_data == binding and result.claims["report_data"] == binding.hex()
    assert result.binds(nonce, public_key)
    assert not result.binds(os.urandom(32), public_key)


def test_binding_through_runtime_data_and_ehd_precedence(rsa_key, verifier):
    nonce, public_key = os.urandom(32), os.urandom(32)
    binding = binding_digest(nonce, public_key)
    runtime = {"x-ms-runtime": {"ppml-binding": binding.hex(), "keys": []}}
    result = verifier.verify(maa(sign(rsa_key, sgx_claims(**runtime))), at=NOW)
    assert result.binds(nonce, public_key)
    both = verifier.verify(maa(sign(rsa_key, sgx_claims(**runtime, **{"x-ms-sgx-ehd": b64url(b"x" * 32)}))), at=NOW)
    assert both.report_data == b"x" * 32 and not both.binds(nonce, public_key)
    with pytest.raises(AttestationError, match="ppml-binding is not hex"):
        verifier.verify(maa(sign(rsa_key, sgx_claims(**{"x-ms-runtime": {"ppml-binding": "zz"}}))), at=NOW)
    with pytest.raises(AttestationError, match="x-ms-sgx-ehd is not base64url"):
        verifier.verify(maa(sign(rsa_key, sgx_claims(**{"x-ms-sgx-ehd": "not base64!"}))), at=NOW)


def test_evidence_of_another_type_refused(verifier):
    with pytest.raises(AttestationError, match="'sgx' evidence was given to the maa verifier"):
        verifier.verify(Evidence("sgx", {"token": "x"}), at=NOW)


def test_configuration_errors(jwks, rsa_key, tmp_path):
    with pytest.raises(ConfigError, match="needs issuers"):
        MaaVerifier(jwks=jwks, issuers=[])
    with pytest.raises(ConfigError, match="needs jwks"):
        MaaVerifier(issuers=[ISSUER])
    with pytest.raises(ConfigError, match="min_rsa_bits=512"):
        MaaVerifier(jwks=jwks, issuers=[ISSUER], min_rsa_bits=512)
    with pytest.raises(ConfigError, match="cannot read the MAA JWKS file"):
        MaaVerifier(jwks=tmp_path / "missing.json", issuers=[ISSUER])
    with pytest.raises(ConfigError, match="not an asymmetric signing key"):
        MaaVerifier(jwks={"keys": [{"kty": "oct", "kid": "k", "k": b64url(b"secret")}]}, issuers=[ISSUER])
    private = RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    with pytest.raises(ConfigError, match="private key") as info:
        MaaVerifier(jwks={"keys": [{**private, "kid": "k"}]}, issuers=[ISSUER])
    assert private["d"] not in str(info.value)
    with pytest.raises(ConfigError, match="no 'kid'"):
        MaaVerifier(jwks={"keys": [RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)]}, issuers=[ISSUER])


def test_registry_and_file_settings(jwks, rsa_key, tmp_path):
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    verifier = open_verifier("maa", jwks=str(tmp_path / "jwks.json"), issuers=[ISSUER + "/"], leeway=0)
    assert isinstance(verifier, MaaVerifier)
    assert verifier.verify(maa(sign(rsa_key, sgx_claims())), at=NOW).claims["issuer"] == ISSUER
