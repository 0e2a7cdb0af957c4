"""What every evidence verifier shares (the checks in ``EvidenceVerifier.verify``) and the verifier registry."""

from __future__ import annotations

import datetime as dt
import json
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

from ppml.attest import evidence as evidence_module
from ppml.attest.evidence import (
    MAX_EVIDENCE_SIZE,
    Evidence,
    EvidenceVerifier,
    VerifiedEvidence,
    available_verifiers,
    open_verifier,
    register_verifier,
    verifier_class,
)
from ppml.attest.simulated import SimulatedVerifier
from ppml.errors import AttestationError, ConfigError, PpmlInsecureWarning, UsageError

NOW = dt.datetime(2025, 7, 15, 12, tzinfo=dt.timezone.utc)


def _ca_pem(tmp_path) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _settings(name: str, tmp_path) -> dict:
    """Settings that open verifier ``name`` here."""
    if name in ("sgx", "tdx", "simulated"):
        return {}
    if name == "maa":
        public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        return {"jwks": {"keys": [{**RSAAlgorithm.to_jwk(public, as_dict=True), "kid": "k"}]},
                "issuers": ["https://test.attest.azure.net"]}
    if name == "tpm":
        return {"ca_certificates": [_ca_pem(tmp_path)]}
    raise AssertionError(f"verifier {name!r} has no settings in this test: add them to _settings")


@pytest.fixture(params=available_verifiers())
def verifier(request, tmp_path) -> EvidenceVerifier:
    """Each registered verifier, opened by its name in upper case."""
    opened = open_verifier(request.param.upper(), **_settings(request.param, tmp_path))
    assert opened.type == request.param
    return opened


def _simulated(size: int = 0) -> Evidence:
    return Evidence("simulated", {"report_data": "00" * 32, "claims": {"pad": "x" * size}})


@pytest.mark.parametrize("at", [dt.datetime(2025, 7, 15), "2025-07-15T00:00:00Z", 1752537600])
def test_every_verifier_refuses_a_time_without_a_zone(verifier, at):
    evidence = Evidence(verifier.type, {})
    with pytest.raises((TypeError, ValueError), match="at must be a timezone-aware datetime"):
        verifier.verify(evidence, at=at)


def test_every_verifier_refuses_evidence_of_another_type(verifier):
    other = "simulated" if verifier.type != "simulated" else "sgx"
    with pytest.raises(AttestationError, match=f"'{other}' evidence was given to the {verifier.type} verifier"):
        verifier.verify(Evidence(other, {}), at=NOW)


def test_every_verifier_refuses_oversized_evidence(verifier):
    evidence = Evidence(verifier.type, {"filler": "x" * MAX_EVIDENCE_SIZE})
    with pytest.raises(AttestationError, match=f"more than {MAX_EVIDENCE_SIZE}"):
        verifier.verify(evidence, at=NOW)


def test_evidence_that_is_not_json_is_refused():
    with pytest.raises(AttestationError, match="not a JSON document"):
        SimulatedVerifier().verify(Evidence("simulated", {"report_data": b"\x00"}), at=NOW)


def test_the_simulated_warning_names_the_caller():
    with pytest.warns(PpmlInsecureWarning, match="proves nothing") as record:
        verified = SimulatedVerifier().verify(_simulated(), at=NOW)
    assert verified.simulated and verified.report_data == bytes(32)
    assert record[0].filename == __file__


def test_the_largest_evidence_allowed_still_verifies():
    overhead = len(json.dumps(_simulated().to_json(), separators=(",", ":")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PpmlInsecureWarning)
        SimulatedVerifier().verify(_simulated(MAX_EVIDENCE_SIZE - overhead), at=NOW)
        with pytest.raises(AttestationError, match="more than"):
            SimulatedVerifier().verify(_simulated(MAX_EVIDENCE_SIZE - overhead + 1), at=NOW)


class _Recorder(EvidenceVerifier):
    """Records what the shared checks hand over."""

    type = "recorded"

    def __init__(self) -> None:
        self.times: list[dt.datetime] = []

    def _verify(self, evidence: Evidence, *, at: dt.datetime) -> VerifiedEvidence:
        self.times.append(at)
        return VerifiedEvidence(self.type, {}, None, "recorder")


def test_the_type_checks_receive_the_time_in_utc():
    recorder = _Recorder()
    local = dt.datetime(2025, 7, 15, 14, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    recorder.verify(Evidence("recorded", {}), at=local)
    assert recorder.times == [NOW] and recorder.times[0].utcoffset() == dt.timedelta(0)


def test_a_verifier_cannot_replace_the_shared_checks():
    with pytest.raises(TypeError, match="overrides EvidenceVerifier.verify: implement _verify"):
        class Lax(SimulatedVerifier):  # noqa: F841 - defining it is the test
            def verify(self, evidence, *, at):
                return super()._verify(evidence, at=at)


# -- the registry ------------------------------------------------------------------------------------------


@pytest.fixture
def verifier_registry(restored_registry):
    return restored_registry(evidence_module._VERIFIERS)


def test_registry_names_and_unknown_types():
    assert available_verifiers() == ["maa", "sgx", "simulated", "tdx", "tpm"]
    assert verifier_class("Simulated") is SimulatedVerifier
    with pytest.raises(UsageError, match="unknown evidence type 'sev'") as info:
        open_verifier("sev")
    assert info.value.hint == "choose one of: maa, sgx, simulated, tdx, tpm"


def test_register_verifier_adds_a_type_and_refuses_silent_replacement(verifier_registry):
    register_verifier(_Recorder)
    assert "recorded" in available_verifiers() and isinstance(open_verifier("RECORDED"), _Recorder)
    register_verifier(_Recorder)  # the same class again is no replacement

    class Impostor(SimulatedVerifier):
        pass

    with pytest.raises(ValueError, match="an evidence type named 'simulated' is already registered"):
        register_verifier(Impostor)
    register_verifier(Impostor, replace=True)
    assert verifier_class("simulated") is Impostor


def test_a_missing_extra_is_named(verifier_registry, tmp_path, monkeypatch):
    verifier_registry._known["needs-extra"] = ("ppml_no_such_module:Verifier", "attest")
    with pytest.raises(ConfigError, match=r"needs packages that are not installed \(ppml_no_such_module\)") as info:
        open_verifier("needs-extra")
    assert info.value.hint == "pip install 'ppml[attest]'"
    # A package that is installed but older than the one the module needs (as cryptography without HPKE).
    (tmp_path / "ppml_test_too_old.py").write_text("from cryptography.hazmat.primitives import no_such_thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    verifier_registry._known["needs-newer"] = ("ppml_test_too_old:Verifier", "attest")
    with pytest.raises(ConfigError, match="needs a newer cryptography than the one installed") as info:
        open_verifier("needs-newer")
    assert info.value.hint == "pip install 'ppml[attest]'"
