"""SGX and TDX quote verification (``ppml.attest.dcap``) against real Intel quotes and collateral.

Offsets follow the quote layout in the module docstring: header 48 bytes, then the report body (SGX 384
bytes: MRENCLAVE at body offset 64, MRSIGNER at 128, report data at 320; TDX v4 584 bytes: MRTD at 136,
report data at 520), then the signature data length (4 bytes) and the ECDSA signature over header and body.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone

import pytest
from attestation_data import (
    DCAP_OUTDATED_TIME,
    DCAP_SAMPLE_TIME,
    requires_attestation_data,
    vector,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppml.attest import Evidence, open_verifier
from ppml.attest.dcap import SgxVerifier, TdxVerifier
from ppml.errors import AttestationError, ConfigError

pytestmark = requires_attestation_data

SGX_BODY, TDX_BODY = 48, 48
SGX_MRENCLAVE, SGX_MRSIGNER, SGX_REPORT_DATA = SGX_BODY + 64, SGX_BODY + 128, SGX_BODY + 320
SGX_SIGNATURE = SGX_BODY + 384 + 4
TDX_MRTD, TDX_REPORT_DATA = TDX_BODY + 136, TDX_BODY + 520
TDX_SIGNATURE = TDX_BODY + 584 + 4
# Bytes covered by a signature: header and body (quote signature); signature, attestation key, QE report
# and its signature. The unsigned framing between them (lengths, certification data type) is left out:
# dcap-qvl tolerates some changes there, which prove nothing about the signed content.
SGX_SIGNED = [*range(0, SGX_SIGNATURE - 4), *range(SGX_SIGNATURE, SGX_SIGNATURE + 64 + 64 + 384 + 64)]
TDX_QE_REPORT = TDX_SIGNATURE + 64 + 64 + 6
TDX_SIGNED = [*range(0, TDX_SIGNATURE - 4), *range(TDX_SIGNATURE, TDX_SIGNATURE + 128),
              *range(TDX_QE_REPORT, TDX_QE_REPORT + 384 + 64)]


def quote_bytes(name: str) -> bytes:
    return vector(name).read_bytes()


def collateral(name: str) -> dict:
    return json.loads(vector(name).read_text())


def evidence(kind: str, quote: bytes | str, collateral_name: str | None) -> Evidence:
    """Evidence of ``kind`` for a quote (bytes, or the name of a quote vector) and a collateral vector."""
    quote = quote_bytes(quote) if isinstance(quote, str) else quote
    payload = {"quote": base64.b64encode(quote).decode()}
    if collateral_name:
        payload["collateral"] = collateral(collateral_name)
    return Evidence(kind, payload)


SGX = ("sgx", "sgx_quote", "sgx_quote_collateral.json")
TDX = ("tdx", "tdx_quote", "tdx_quote_collateral.json")


def verify(kind: str, quote: bytes, collateral_name: str | None, at: datetime = DCAP_SAMPLE_TIME):
    return open_verifier(kind).verify(evidence(kind, quote, collateral_name), at=at)


def test_registry_builds_the_dcap_verifiers():
    assert isinstance(open_verifier("sgx"), SgxVerifier)
    assert isinstance(open_verifier("tdx"), TdxVerifier)


def test_sgx_sample_verifies_with_its_tcb_status_and_measurements():
    quote = quote_bytes("sgx_quote")
    result = verify("sgx", quote, "sgx_quote_collateral.json")
    claims = result.claims
    assert claims["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert claims["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    # The claims equal the bytes at the documented offsets of the quote.
    assert claims["mrenclave"] == quote[SGX_MRENCLAVE:SGX_MRENCLAVE + 32].hex()
    assert claims["mrsigner"] == quote[SGX_MRSIGNER:SGX_MRSIGNER + 32].hex()
    assert claims["mrenclave"].startswith("33d8736db756ed49") and claims["mrenclave"] == claims["mrenclave"].lower()
    assert (claims["isv_prod_id"], claims["isv_svn"], claims["debug"], claims["quote_version"]) == (0, 0, False, 3)
    assert result.report_data == quote[SGX_REPORT_DATA:SGX_REPORT_DATA + 64]
    assert result.report_data.startswith(b"Hello, world!")
    assert claims["report_data"] == result.report_data.hex()
    assert result.identity == "sgx mrenclave=33d8736db756ed49… mrsigner=815f42f11cf64430…"
    assert result.type == "sgx" and not result.simulated and not result.warnings
    assert not result.binds(bytes(32), bytes(32))
    json.dumps(result.to_json())


def test_tdx_sample_verifies_up_to_date():
    quote = quote_bytes("tdx_quote")
    result = verify("tdx", quote, "tdx_quote_collateral.json")
    claims = result.claims
    assert claims["tcb_status"] == "UpToDate" and claims["advisory_ids"] == []
    assert claims["mrtd"] == quote[TDX_MRTD:TDX_MRTD + 48].hex()
    assert claims["rtmr0"].startswith("44c0197b39157fdd")
    assert claims["rtmr3"] == "00" * 48
    assert claims["mrseam"].startswith("5b38e33a6487958b")
    assert claims["mrconfigid"] == claims["mrowner"] == "00" * 48
    assert claims["debug"] is False and claims["quote_version"] == 4
    assert result.report_data == quote[TDX_REPORT_DATA:TDX_REPORT_DATA + 64]
    assert result.identity.startswith("tdx mrtd=91eb2b44d141d4ec…")


def test_collateral_from_the_verifier_setting_path_or_object():
    quote = quote_bytes("tdx_quote")
    for setting in (vector("tdx_quote_collateral.json"), str(vector("tdx_quote_collateral.json")),
                    collateral("tdx_quote_collateral.json")):
        result = TdxVerifier(collateral=setting).verify(evidence("tdx", quote, None), at=DCAP_SAMPLE_TIME)
        assert result.claims["tcb_status"] == "UpToDate"


def test_the_operators_collateral_wins_over_the_evidences():
    # The setting is collateral issued in 2026 (not valid at the sample time); the caller's own collateral
    # would verify, but a caller must not choose which (possibly older) Intel-signed set is used.
    verifier = TdxVerifier(collateral=vector("tdx_quote_outdated_collateral.json"))
    with pytest.raises(AttestationError):
        verifier.verify(evidence(*TDX), at=DCAP_SAMPLE_TIME)
    assert TdxVerifier().verify(evidence(*TDX), at=DCAP_SAMPLE_TIME).claims["tcb_status"] == "UpToDate"


def test_no_collateral_anywhere_is_refused():
    with pytest.raises(AttestationError, match="no collateral"):
        verify("sgx", quote_bytes("sgx_quote"), None)


def test_evidence_cannot_name_a_collateral_file():
    # A path in the evidence must never make the verifier read a local file.
    ev = Evidence("sgx", {"quote": base64.b64encode(quote_bytes("sgx_quote")).decode(),
                          "collateral": str(vector("sgx_quote_collateral.json"))})
    with pytest.raises(AttestationError, match="must be a JSON object"):
        open_verifier("sgx").verify(ev, at=DCAP_SAMPLE_TIME)


def test_bad_collateral_setting_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the collateral file"):
        SgxVerifier(collateral=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"tcb_info": 1}')
    with pytest.raises(ConfigError, match="not dcap-qvl collateral"):
        SgxVerifier(collateral=tmp_path / "bad.json")


def test_outdated_tdx_fails_tcb_matching():
    with pytest.raises(AttestationError, match="TCB matching failed"):
        verify("tdx", quote_bytes("tdx_quote_outdated"), "tdx_quote_outdated_collateral.json", DCAP_OUTDATED_TIME)


def test_collateral_issued_after_the_verification_time_is_refused():
    with pytest.raises(AttestationError, match="not yet valid at 2025-07-15T00:00:00Z"):
        verify("tdx", quote_bytes("tdx_quote_outdated"), "tdx_quote_outdated_collateral.json")


def test_production_quote_refused_with_another_platforms_collateral():
    with pytest.raises(AttestationError, match="another platform.*FMSPC 50806F000000"):
        verify("tdx", quote_bytes("tdx_prod_quote_SPR_E4.dat"), "tdx_quote_collateral.json")


@pytest.mark.parametrize("kind, quote_name, collateral_name", [SGX, TDX])
def test_verification_now_fails_with_an_expiry_message(kind, quote_name, collateral_name):
    now = datetime.now(timezone.utc)
    if now < datetime(2025, 7, 20, tzinfo=timezone.utc):  # pragma: no cover - only before the collateral expired
        pytest.skip("the sample collateral is still valid")
    with pytest.raises(AttestationError, match=r"collateral not valid at 20\d\d-.*expired.*pass --at") as info:
        verify(kind, quote_bytes(quote_name), collateral_name, now)
    assert now.strftime("%Y-%m-%dT%H:%M") in str(info.value)


def test_sgx_verifier_refuses_a_tdx_quote_and_back():
    with pytest.raises(AttestationError, match="sgx verifier was given a TDX quote.*0x81.*'tdx'"):
        verify("sgx", quote_bytes("tdx_quote"), "sgx_quote_collateral.json")
    with pytest.raises(AttestationError, match="tdx verifier was given an SGX quote"):
        verify("tdx", quote_bytes("sgx_quote"), "tdx_quote_collateral.json")


def test_evidence_of_another_type_is_refused():
    with pytest.raises(AttestationError, match="'sgx' evidence was given to the tdx verifier"):
        open_verifier("tdx").verify(evidence(*SGX), at=DCAP_SAMPLE_TIME)


@pytest.mark.parametrize("kind, quote_name, collateral_name, offset, check", [
    (*SGX, SGX_MRENCLAVE, "quote signature"),
    (*SGX, SGX_REPORT_DATA, "quote signature"),
    (*SGX, SGX_SIGNATURE + 10, "quote signature"),
    (*SGX, SGX_SIGNATURE + 128 + 100, "quoting enclave"),
    (*TDX, TDX_MRTD, "quote signature"),
    (*TDX, TDX_REPORT_DATA + 31, "quote signature"),
    (*TDX, TDX_SIGNATURE, "quote signature"),
], ids=["sgx-mrenclave", "sgx-report-data", "sgx-signature", "sgx-qe-report", "tdx-mrtd", "tdx-report-data",
        "tdx-signature"])
def test_one_flipped_byte_is_refused(kind, quote_name, collateral_name, offset, check):
    quote = bytearray(quote_bytes(quote_name))
    quote[offset] ^= 0x01
    with pytest.raises(AttestationError, match=f"{kind} quote refused: the {check}.*refuse it"):
        verify(kind, bytes(quote), collateral_name)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_signed_byte_is_refused(data):
    kind, quote_name, collateral_name = data.draw(st.sampled_from([SGX, TDX]))
    quote = bytearray(quote_bytes(quote_name))
    offset = data.draw(st.sampled_from(SGX_SIGNED if kind == "sgx" else TDX_SIGNED))
    quote[offset] ^= data.draw(st.integers(1, 255))
    with pytest.raises(AttestationError, match="refused|was given"):
        verify(kind, bytes(quote), collateral_name)


@pytest.mark.parametrize("length", [0, 10, 47, 200, 1000])
def test_truncated_quote_is_refused_cleanly(length):
    quote = quote_bytes("sgx_quote")[:length]
    with pytest.raises(AttestationError, match="quote"):
        verify("sgx", quote, "sgx_quote_collateral.json")


def test_quote_field_must_be_base64():
    with pytest.raises(AttestationError, match="'quote'"):
        open_verifier("sgx").verify(Evidence("sgx", {"quote": "not base64!"}), at=DCAP_SAMPLE_TIME)


def test_naive_time_is_a_programming_error():
    with pytest.raises(ValueError, match="timezone-aware"):
        verify("sgx", quote_bytes("sgx_quote"), "sgx_quote_collateral.json", datetime(2025, 7, 15))


def test_debug_bits_are_read_from_the_attributes():
    # A real debug quote would need a debug enclave; check the bit positions on the verified-report shape.
    sgx = {"SgxEnclave": {"attributes": "0700000000000000e700000000000000", "mr_enclave": "AB" * 32,
                          "mr_signer": "cd" * 32, "isv_prod_id": 1, "isv_svn": 2, "report_data": "00" * 64}}
    assert SgxVerifier()._claims(sgx)["debug"] is True
    assert SgxVerifier()._claims(sgx)["mrenclave"] == "ab" * 32
    sgx["SgxEnclave"]["attributes"] = "0500000000000000e700000000000000"
    assert SgxVerifier()._claims(sgx)["debug"] is False
    td = {"mr_td": "11" * 48, "mr_seam": "22" * 48, "mr_config_id": "00" * 48, "mr_owner": "00" * 48,
          "td_attributes": "0100001000000000", "report_data": "00" * 64,
          **{f"rt_mr{i}": "33" * 48 for i in range(4)}}
    assert TdxVerifier()._claims({"TD15": td})["debug"] is True
    td["td_attributes"] = "0000001000000000"
    assert TdxVerifier()._claims({"TD10": td})["debug"] is False
    with pytest.raises(AttestationError, match="non-TD report"):
        TdxVerifier()._claims(sgx)


def test_azure_sgx_quote_parses_and_binds_its_enclave_held_data_but_has_no_collateral():
    import dcap_qvl

    info = json.loads(vector("azure-sgx-enclave-info.json").read_text())
    quote = bytes.fromhex(info["QuoteHex"])
    report = dcap_qvl.parse_quote(quote).report
    assert report.mr_enclave.hex() == info["MrEnclaveHex"].lower()
    assert report.mr_signer.hex() == info["MrSignerHex"].lower()
    assert report.report_data[:32] == hashlib.sha256(bytes.fromhex(info["EnclaveHeldDataHex"])).digest()
    with pytest.raises(AttestationError, match="another platform"):
        verify("sgx", quote, "sgx_quote_collateral.json")


# -- quotes of the test platform, and reusing a full verification --------------------------------------------


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    from sgx_platform import SgxPlatform

    made = SgxPlatform.from_sample(vector("sgx_quote"), vector("sgx_quote_collateral.json"))
    root = tmp_path_factory.mktemp("sgx-root") / "root.der"
    root.write_bytes(made.root_der)
    return made, root


def test_quotes_of_the_test_platform_verify_against_its_root_only(platform, caplog):
    made, root = platform
    binding = hashlib.sha256(b"request").digest()
    verified = SgxVerifier(root_ca=root).verify(Evidence.from_json(made.evidence(binding)),
                                                at=datetime.now(timezone.utc))
    assert verified.report_data == binding + bytes(32) and verified.claims["tcb_status"] == \
        "ConfigurationAndSWHardeningNeeded"
    assert verified.claims["mrenclave"] == quote_bytes("sgx_quote")[SGX_MRENCLAVE:SGX_MRENCLAVE + 32].hex()
    assert "instead of Intel's: for test platforms only" in caplog.text
    with pytest.raises(AttestationError, match="certificate chain|root"):
        SgxVerifier().verify(Evidence.from_json(made.evidence(binding)), at=datetime.now(timezone.utc))


def test_a_full_verification_vouches_for_later_quotes_that_differ_only_in_report_data(platform, monkeypatch):
    import dcap_qvl

    made, root = platform
    calls = []
    full = dcap_qvl.verify_with_root_ca
    monkeypatch.setattr(dcap_qvl, "verify_with_root_ca", lambda *a: calls.append(1) or full(*a))
    now = datetime.now(timezone.utc)
    verifier = SgxVerifier(root_ca=root)
    for index in range(5):
        binding = hashlib.sha256(bytes([index])).digest()
        assert verifier.verify(Evidence.from_json(made.evidence(binding)), at=now).report_data[:32] == binding
    assert len(calls) == 1
    # Another report data under the old signature: the reused key refuses it, and the full check says why.
    quote = bytearray(made.quote(b"\x01" * 32))
    quote[SGX_REPORT_DATA] ^= 0xFF
    tampered = {**made.evidence(b""), "quote": base64.b64encode(bytes(quote)).decode()}
    with pytest.raises(AttestationError, match="quote signature"):
        verifier.verify(Evidence.from_json(tampered), at=now)
    assert len(calls) == 2
    every = SgxVerifier(root_ca=root, cache=0)
    for index in range(3):
        every.verify(Evidence.from_json(made.evidence(bytes([index]) * 32)), at=now)
    assert len(calls) == 5
