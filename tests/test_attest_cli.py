"""``ppml attest verify`` (run in-process on the ``ppml.cli.attest`` sub-app) and simulated attestation.

Errors surface here as the exception the command raised (``ppml.cli.main`` turns them into ``error:``
lines and exit codes); CliRunner reports any exception as exit code 1.
"""

from __future__ import annotations

import base64
import json
import os
import warnings
from datetime import datetime, timezone

import pytest
from attestation_data import MAA_2021_ISSUER, requires_attestation_data, vector
from typer.testing import CliRunner

from ppml.attest import Evidence, binding_digest, open_verifier
from ppml.attest.attester import open_attester
from ppml.attest.simulated import SimulatedAttester, SimulatedVerifier
from ppml.cli.attest import app
from ppml.errors import AttestationError, ConfigError, NotFoundError, PpmlInsecureWarning, UsageError

SAMPLE_AT = "2025-07-15T00:00:00Z"
NOW = datetime.now(timezone.utc)


def run(*args: str):
    return CliRunner().invoke(app, ["verify", *map(str, args)])


def ok(result) -> dict:
    assert result.exit_code == 0, (result.exception, result.stderr)
    document = json.loads(result.stdout)
    assert document["kind"] == "attest.verify"
    return document


def failed(result, error: type[Exception], message: str) -> None:
    assert result.exit_code == 1 and result.stdout == ""
    assert isinstance(result.exception, error), result.exception
    assert message in str(result.exception)


@requires_attestation_data
def test_raw_sgx_quote_with_collateral_at_a_pinned_time():
    document = ok(run(vector("sgx_quote"), "--type", "sgx", "--collateral", vector("sgx_quote_collateral.json"),
                      "--at", SAMPLE_AT))
    assert document["verified_at"] == SAMPLE_AT
    assert document["type"] == "sgx" and document["simulated"] is False
    assert document["claims"]["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert document["identity"].startswith("sgx mrenclave=33d8736db756ed49")


@requires_attestation_data
def test_json_tdx_evidence_and_time_zones(tmp_path):
    evidence = {"type": "tdx", "quote": base64.b64encode(vector("tdx_quote").read_bytes()).decode(),
                "collateral": json.loads(vector("tdx_quote_collateral.json").read_text())}
    (tmp_path / "evidence.json").write_text(json.dumps(evidence))
    document = ok(run(tmp_path / "evidence.json", "--type", "tdx", "--at", "2025-07-15T02:00:00+02:00"))
    assert document["verified_at"] == SAMPLE_AT and document["claims"]["tcb_status"] == "UpToDate"
    # A time without a zone is UTC.
    assert ok(run(tmp_path / "evidence.json", "--type", "tdx", "--at", "2025-07-15"))["verified_at"] == SAMPLE_AT
    result = run(tmp_path / "evidence.json", "--type", "sgx")
    assert isinstance(result.exception, UsageError) and "holds 'tdx' evidence" in str(result.exception)


@requires_attestation_data
def test_default_time_is_now_and_the_sample_collateral_has_expired():
    failed(run(vector("tdx_quote"), "--type", "tdx", "--collateral", vector("tdx_quote_collateral.json")),
           AttestationError, "collateral not valid at")


@requires_attestation_data
def test_sgx_type_refuses_a_tdx_quote():
    failed(run(vector("tdx_quote"), "--type", "sgx", "--collateral", vector("sgx_quote_collateral.json"),
               "--at", SAMPLE_AT), AttestationError, "given a TDX quote")


@requires_attestation_data
def test_maa_jwt_file():
    args = (vector("maa-sgx-2021.jwt"), "--type", "maa", "--jwks", vector("maa-sgx-2021-jwks.json"),
            "--issuer", "https://other.example", "--issuer", MAA_2021_ISSUER, "--at", "2021-05-05T22:00:00Z")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        document = ok(run(*args, "--min-rsa-bits", "1024"))
    assert document["claims"]["x-ms-sgx-mrenclave"].startswith("b779202618becb63")
    assert document["claims"]["attestation_type"] == "sgx"
    failed(run(*args), AttestationError, "1024-bit RSA key")


@requires_attestation_data
def test_maa_needs_keys_and_issuers():
    result = run(vector("maa-sgx-2021.jwt"), "--type", "maa", "--issuer", MAA_2021_ISSUER)
    assert isinstance(result.exception, UsageError) and "--jwks" in str(result.exception)


@requires_attestation_data
@pytest.mark.parametrize("args, message", [
    (["--type", "sgx", "--jwks", "x.json"], "--jwks is for --type maa"),
    (["--type", "maa", "--collateral", "c.json"], "--collateral is for --type sgx or tdx"),
    (["--type", "tdx", "--ca", "ca.pem"], "--ca is for --type tpm"),
    (["--type", "tpm"], "--type tpm needs --ca"),
    (["--type", "sgx", "--at", "yesterday"], "--at 'yesterday' is not an ISO 8601 time"),
    (["--type", "sev"], "unknown evidence type 'sev'"),
])
def test_usage_errors(args, message):
    result = run(vector("sgx_quote"), *args)
    assert isinstance(result.exception, UsageError), result.exception
    assert message in str(result.exception)


def test_tpm_evidence_reaches_the_tpm_verifier_with_the_ca(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ppml test AK CA")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(1).not_valid_before(datetime(2025, 1, 1)).not_valid_after(datetime(2035, 1, 1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tpm.json").write_text(json.dumps({"type": "tpm", "quote": "AAAA", "signature": "AAAA"}))
    # The verifier was built with the CA and refused the (incomplete) evidence itself.
    result = run(tmp_path / "tpm.json", "--type", "tpm", "--ca", tmp_path / "ca.pem")
    failed(result, AttestationError, "")
    assert "tpm" in str(result.exception).lower()


def test_missing_or_unreadable_evidence(tmp_path):
    result = run(tmp_path / "missing.json", "--type", "simulated")
    assert isinstance(result.exception, NotFoundError)
    (tmp_path / "bad.json").write_text("{not json")
    failed(run(tmp_path / "bad.json", "--type", "simulated"), AttestationError, "not valid JSON")
    (tmp_path / "raw.bin").write_bytes(b"\x03\x00raw")
    failed(run(tmp_path / "raw.bin", "--type", "simulated"), AttestationError, "not a JSON evidence document")


def test_help():
    result = CliRunner().invoke(app, ["verify", "--help"])
    assert result.exit_code == 0 and "--collateral" in result.stdout and "--at" in result.stdout


# --- simulated attestation ---------------------------------------------------------------------------------


def test_simulated_round_trip_warns_every_time(tmp_path):
    nonce, public_key = os.urandom(32), os.urandom(32)
    binding = binding_digest(nonce, public_key)
    attester = open_attester("simulated", claims={"mrenclave": "ab" * 32, "report_data": "ignored"})
    assert isinstance(attester, SimulatedAttester)
    with pytest.warns(PpmlInsecureWarning, match="proves nothing"):
        evidence = attester.attest(binding)
    assert evidence.to_json()["report_data"] == binding.hex()
    verifier = open_verifier("simulated")
    assert isinstance(verifier, SimulatedVerifier)
    for _ in range(2):
        with pytest.warns(PpmlInsecureWarning, match="simulated evidence proves nothing"):
            result = verifier.verify(Evidence.from_json(json.loads(json.dumps(evidence.to_json()))), at=NOW)
        assert result.simulated and result.warnings[0].startswith("simulated evidence proves nothing")
        assert result.claims == {"mrenclave": "ab" * 32, "report_data": binding.hex()}
        assert result.binds(nonce, public_key) and not result.binds(os.urandom(32), public_key)
    (tmp_path / "sim.json").write_text(json.dumps(evidence.to_json()))
    with pytest.warns(PpmlInsecureWarning):
        document = ok(run(tmp_path / "sim.json", "--type", "Simulated"))  # names are case-insensitive
    assert document["simulated"] is True and document["warnings"]


@pytest.mark.parametrize("payload, message", [
    ({}, "lacks 'report_data'"),
    ({"report_data": "zz"}, "lacks 'report_data'"),
    ({"report_data": "00" * 65}, "65 bytes"),
    ({"report_data": "00", "claims": []}, "'claims' must be a JSON object"),
])
def test_malformed_simulated_evidence_refused_but_still_warns(payload, message):
    with pytest.warns(PpmlInsecureWarning), pytest.raises(AttestationError, match=message):
        SimulatedVerifier().verify(Evidence("simulated", payload), at=NOW)


def test_simulated_attester_checks_its_inputs():
    with pytest.raises(ConfigError, match="not JSON-compatible"):
        SimulatedAttester(claims={"when": object()})
    with pytest.raises(ValueError, match="32 bytes"):
        SimulatedAttester().attest(b"short")
    with pytest.raises(TypeError):
        SimulatedAttester().attest("00" * 32)
