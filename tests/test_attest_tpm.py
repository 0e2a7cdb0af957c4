"""TPM 2.0 quotes end to end: ``TpmAttester`` on a real swtpm, ``TpmVerifier`` with ``cryptography`` only.

The swtpm, its certified AK and the test CAs come from ``tests/swtpm.py``. Tamper tests change one thing
in otherwise good evidence and check that verification fails naming that check.
"""

# The fixtures are imported from swtpm and then requested by name (pytest's way).
# ruff: noqa: F811

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ppml.attest import Evidence, binding_digest, open_verifier
from ppml.attest.attester import open_attester
from ppml.attest.tpm import TpmVerifier
from ppml.attest.tpm_structures import parse_quote, parse_signature
from ppml.attest.tpm_attester import TpmAttester
from ppml.errors import AttestationError, ConfigError
from swtpm import OTHER_AK_HANDLE, TestCa, create_ak, make_ca, tpm_env  # noqa: F401

PCR16_EVENT = hashlib.sha256(b"ppml test workload").digest()
PCR16_VALUE = hashlib.sha256(bytes(32) + PCR16_EVENT).hexdigest()  # PCR 16 after reset + one extend


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Quoted:
    evidence: Evidence
    nonce: bytes
    public_key: bytes


@pytest.fixture(scope="module")
def quoted(tpm_env) -> Quoted:
    """Good evidence over PCRs 0-7 and 16, PCR 16 reset and extended once, bound to a fresh request."""
    tpm_env.reset_pcr(16)
    tpm_env.extend_pcr(16, PCR16_EVENT)
    nonce, public_key = os.urandom(32), os.urandom(32)
    return Quoted(tpm_env.attester().attest(binding_digest(nonce, public_key)), nonce, public_key)


def changed(evidence: Evidence, **fields) -> Evidence:
    """A copy of ``evidence`` with payload fields replaced (``None`` removes the field)."""
    payload = json.loads(json.dumps(dict(evidence.payload)))
    for name, value in fields.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return Evidence(evidence.type, payload)


def flip(b64: str, offset: int) -> str:
    data = bytearray(base64.b64decode(b64))
    data[offset] ^= 0x01
    return base64.b64encode(bytes(data)).decode()


def fails(verifier: TpmVerifier, evidence: Evidence, pattern: str, *, at: dt.datetime | None = None) -> str:
    with pytest.raises(AttestationError) as info:
        verifier.verify(evidence, at=at or now())
    message = str(info.value)
    assert re.search(pattern, message, re.IGNORECASE), message
    assert info.value.hint, "every attestation error says what to do"
    return message


# -- the good path ---------------------------------------------------------------------------------------------


def test_quote_verifies_and_proves_pcrs(tpm_env, quoted):
    verified = tpm_env.verifier().verify(quoted.evidence, at=now())
    assert verified.type == "tpm" and not verified.simulated
    assert verified.claims["pcrs"]["sha256"]["16"] == PCR16_VALUE
    assert set(verified.claims["pcrs"]["sha256"]) == {"0", "1", "2", "3", "4", "5", "6", "7", "16"}
    assert verified.report_data == binding_digest(quoted.nonce, quoted.public_key)
    assert verified.claims["report_data"] == verified.report_data.hex()
    assert verified.claims["ak_subject"] == "CN=ppml-test-vm"
    assert verified.identity == "tpm ak=ppml-test-vm"
    assert isinstance(verified.claims["clock"], int) and isinstance(verified.claims["firmware_version"], int)
    assert verified.binds(quoted.nonce, quoted.public_key)
    assert not verified.binds(quoted.nonce, os.urandom(32))
    assert not verified.binds(os.urandom(32), quoted.public_key)
    json.dumps(verified.to_json())  # claims are JSON


def test_registry_and_json_round_trip(tpm_env, quoted):
    attester = open_attester("tpm", **tpm_env.attester_settings(pcrs=[16]))
    evidence = Evidence.from_json(json.loads(json.dumps(attester.attest(b"\x07" * 32).to_json())))
    verified = open_verifier("tpm", ca_certificates=[str(tpm_env.ca_path)]).verify(evidence, at=now())
    assert verified.claims["pcrs"] == {"sha256": {"16": PCR16_VALUE}}
    assert verified.report_data == b"\x07" * 32


def test_intermediate_ca_may_be_the_trust_anchor(tpm_env, quoted):
    only_ak = changed(quoted.evidence, certificates=quoted.evidence.payload["certificates"][:1])
    tpm_env.verifier(ca_certificates=[tpm_env.intermediate.path]).verify(only_ak, at=now())
    fails(tpm_env.verifier(), only_ak, r"untrusted issuer")


def test_transient_ak_context_is_flushed(tpm_env):
    # A context file loads the AK as a transient object; without the attester's flush the 4th quote
    # would fail with 0x902 (the TPM has 3 object slots and swtpm no resource manager).
    attester = tpm_env.attester(ak_handle=None, ak_context=tpm_env.folder / "ak" / "ak.ctx")
    verifier = tpm_env.verifier()
    for i in range(4):
        verifier.verify(attester.attest(bytes([i]) * 32), at=now())
    assert "0x80" not in tpm_env.tpm.run("tpm2_getcap", "handles-transient")


@pytest.mark.parametrize("scheme", ["rsassa", "rsapss"])
def test_rsa_attestation_keys(tpm_env, tmp_path, scheme):
    public_key = create_ak(tpm_env.tpm, tmp_path, key_alg="rsa", scheme=scheme)
    cert = tpm_env.certify(public_key, f"rsa-{scheme}-vm")
    attester = tpm_env.attester(ak_handle=None, ak_context=tmp_path / "ak.ctx", scheme=scheme,
                                certificates=[cert, tpm_env.intermediate.path])
    evidence = attester.attest(b"\x01" * 32)
    assert parse_signature(base64.b64decode(evidence.payload["signature"])).algorithm == scheme
    assert tpm_env.verifier().verify(evidence, at=now()).identity == f"tpm ak=rsa-{scheme}-vm"
    fails(tpm_env.verifier(), changed(evidence, signature=flip(evidence.payload["signature"], 10)),
          r"signature invalid")


def test_ak_certificate_from_nv_index(tpm_env):
    # Azure keeps the AK certificate as DER in NV index 0x01C101D0; the index may be larger than the DER.
    index = "0x01C101D0"
    der = tpm_env.ak_cert.public_bytes(serialization.Encoding.DER)
    blob = tpm_env.folder / "nv-blob"
    blob.write_bytes(der + bytes(64))
    tpm_env.tpm.run("tpm2_nvdefine", index, "-C", "o", "-s", str(len(der) + 64),
                    "-a", "ownerread|ownerwrite|authread|authwrite")
    try:
        tpm_env.tpm.run("tpm2_nvwrite", index, "-C", "o", "-i", str(blob))
        attester = tpm_env.attester(ak_cert_nv_index=index, certificates=[tpm_env.intermediate.path])
        evidence = attester.attest(b"\x02" * 32)
        assert evidence.payload["certificates"][0].startswith("-----BEGIN CERTIFICATE-----")
        tpm_env.verifier().verify(evidence, at=now())
    finally:
        tpm_env.tpm.run("tpm2_nvundefine", index, "-C", "o")


# -- tampering: each must bite ---------------------------------------------------------------------------------


def quote_regions(quote_b64: str) -> dict[str, int]:
    """Offsets of fields in a quote, from the TPMS_ATTEST layout (not from the parser under test)."""
    data = base64.b64decode(quote_b64)
    signer_size = int.from_bytes(data[6:8], "big")
    extra_at = 8 + signer_size + 2
    return {"magic": 0, "type": 5, "qualifiedSigner": 9, "extraData": extra_at + 3,
            "clock": extra_at + 32 + 7, "pcrDigest": len(data) - 1}


@pytest.mark.parametrize("region, pattern", [
    ("magic", r"bad magic"),
    ("type", r"wrong type"),
    ("qualifiedSigner", r"signature invalid"),
    ("extraData", r"signature invalid"),
    ("clock", r"signature invalid"),
    ("pcrDigest", r"signature invalid"),
])
def test_flipped_quote_byte(tpm_env, quoted, region, pattern):
    quote = quoted.evidence.payload["quote"]
    fails(tpm_env.verifier(), changed(quoted.evidence, quote=flip(quote, quote_regions(quote)[region])), pattern)


@pytest.mark.parametrize("offset, pattern", [(1, r"unsupported algorithm"), (3, r"unsupported hash"),
                                             (10, r"signature invalid"), (-1, r"signature invalid")])
def test_flipped_signature_byte(tpm_env, quoted, offset, pattern):
    signature = quoted.evidence.payload["signature"]
    offset %= len(base64.b64decode(signature))
    fails(tpm_env.verifier(), changed(quoted.evidence, signature=flip(signature, offset)), pattern)


def test_changed_pcr_value(tpm_env, quoted):
    pcrs = json.loads(json.dumps(quoted.evidence.payload["pcrs"]))
    pcrs["sha256"]["16"] = "00" * 32
    fails(tpm_env.verifier(), changed(quoted.evidence, pcrs=pcrs), r"PCR digest mismatch")


@pytest.mark.parametrize("edit, pattern", [
    (lambda p: p["sha256"].pop("16"), r"differ from those the quote selects"),
    (lambda p: p["sha256"].update({"9": "00" * 32}), r"differ from those the quote selects"),
    (lambda p: p.update({"sha1": p.pop("sha256")}), r"banks supplied .* differ"),
    (lambda p: p["sha256"].update({"0": "00" * 31}), r"not 32 bytes of hex"),
    (lambda p: p["sha256"].update({"0": "zz" * 32}), r"not 32 bytes of hex"),
])
def test_pcr_set_differs_from_selection(tpm_env, quoted, edit, pattern):
    pcrs = json.loads(json.dumps(quoted.evidence.payload["pcrs"]))
    edit(pcrs)
    fails(tpm_env.verifier(), changed(quoted.evidence, pcrs=pcrs), pattern)


def test_quote_must_cover_configured_bank(tpm_env, quoted):
    fails(tpm_env.verifier(pcr_bank="sha384"), quoted.evidence, r"does not cover the sha384 PCR bank")


def test_ak_certificate_from_another_ca(tpm_env, quoted, tmp_path):
    rogue_root = make_ca(tmp_path, "rogue root CA")
    rogue = make_ca(tmp_path, "rogue intermediate CA", issuer=rogue_root)
    cert = rogue.issue(tpm_env.ak_public_key, "ppml-test-vm")
    pems = [cert.public_bytes(serialization.Encoding.PEM).decode(), rogue.path.read_text()]
    fails(tpm_env.verifier(), changed(quoted.evidence, certificates=pems), r"untrusted issuer")
    # Also fails with the CA configured by the verifier added to the chain: nothing links it to the rogue one.
    fails(tpm_env.verifier(), changed(quoted.evidence, certificates=[*pems, tpm_env.intermediate.path.read_text()]),
          r"untrusted issuer")


def test_impostor_ca_with_the_trusted_name(tpm_env, quoted, tmp_path):
    impostor = make_ca(tmp_path, "ppml test vTPM intermediate CA")  # same name as the real intermediate
    cert = impostor.issue(tpm_env.ak_public_key, "ppml-test-vm")
    pems = [cert.public_bytes(serialization.Encoding.PEM).decode()]
    verifier = tpm_env.verifier(ca_certificates=[tpm_env.intermediate.path])
    fails(verifier, changed(quoted.evidence, certificates=pems), r"untrusted issuer.*does not verify with")
    fails(tpm_env.verifier(), changed(quoted.evidence, certificates=[*pems, impostor.path.read_text()]),
          r"untrusted issuer")


def test_expired_and_not_yet_valid_ak_certificate(tpm_env, quoted):
    not_after = tpm_env.ak_cert.not_valid_after_utc
    fails(tpm_env.verifier(), quoted.evidence, r"AK certificate .* expired", at=not_after + dt.timedelta(seconds=1))
    fails(tpm_env.verifier(), quoted.evidence, r"not valid before",
          at=tpm_env.ak_cert.not_valid_before_utc - dt.timedelta(seconds=1))


def test_issuer_without_ca_flag(tpm_env, quoted, tmp_path):
    # An end-entity certificate of the real root (not a CA) must not be able to certify AKs.
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    not_a_ca = tpm_env.root.issue(leaf_key.public_key(), "ppml test vTPM intermediate CA")
    fake = TestCa(leaf_key, not_a_ca, tmp_path / "x.pem")
    cert = fake.issue(tpm_env.ak_public_key, "ppml-test-vm")
    pems = [cert.public_bytes(serialization.Encoding.PEM).decode(),
            not_a_ca.public_bytes(serialization.Encoding.PEM).decode()]
    fails(tpm_env.verifier(), changed(quoted.evidence, certificates=pems), r"is not a CA certificate")


def test_quote_signed_by_an_uncertified_key(tpm_env, quoted):
    other = tpm_env.attester(ak_handle=OTHER_AK_HANDLE).attest(binding_digest(quoted.nonce, quoted.public_key))
    # The other AK's quote is a perfectly good TPM quote, with the first AK's certificate attached.
    assert other.payload["certificates"] == quoted.evidence.payload["certificates"]
    fails(tpm_env.verifier(), other, r"signature invalid")


@pytest.mark.parametrize("field", ["quote", "signature", "pcrs", "certificates"])
def test_missing_field(tpm_env, quoted, field):
    fails(tpm_env.verifier(), changed(quoted.evidence, **{field: None}), rf"lacks the field '{field}'")


@pytest.mark.parametrize("fields, pattern", [
    ({"quote": "not base64!"}, r"'quote' is not valid base64"),
    ({"signature": "%%%"}, r"'signature' is not valid base64"),
    ({"certificates": ["not a certificate"]}, r"AK certificate is not a valid PEM"),
    ({"certificates": "PEM"}, r"lacks the field 'certificates'"),
    ({"pcrs": ["0"]}, r"lacks the field 'pcrs'"),
])
def test_malformed_fields(tpm_env, quoted, fields, pattern):
    fails(tpm_env.verifier(), changed(quoted.evidence, **fields), pattern)


def test_truncated_and_padded_quote(tpm_env, quoted):
    data = base64.b64decode(quoted.evidence.payload["quote"])
    for cut in (3, 7, 30, len(data) - 1):
        short = base64.b64encode(data[:cut]).decode()
        fails(tpm_env.verifier(), changed(quoted.evidence, quote=short), r"truncated")
    long = base64.b64encode(data + b"\0").decode()
    fails(tpm_env.verifier(), changed(quoted.evidence, quote=long), r"unexpected bytes")
    huge = base64.b64encode(data[:6] + b"\xff\xff" + bytes(70_000)).decode()
    fails(tpm_env.verifier(), changed(quoted.evidence, quote=huge), r"more than")


# -- the attester's errors ------------------------------------------------------------------------------------


def test_attester_unreachable_tpm_names_tcti(tpm_env):
    tcti = "swtpm:host=127.0.0.1,port=1"
    with pytest.raises(AttestationError, match=re.escape(tcti)) as info:
        tpm_env.attester(tcti=tcti).attest(b"\0" * 32)
    assert "unreachable" in str(info.value)


def test_attester_without_ak_at_handle(tpm_env):
    with pytest.raises(AttestationError, match=r"0x81000010") as info:
        tpm_env.attester(ak_handle="0x81000010").attest(b"\0" * 32)
    assert "tpm2_evictcontrol" in (info.value.hint or "")


def test_attester_without_tpm2_tools(tpm_env, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"tpm2_quote") as info:
        tpm_env.attester().attest(b"\0" * 32)
    assert "apt-get install tpm2-tools" in (info.value.hint or "")


@pytest.mark.parametrize("settings, pattern", [
    ({"ak_handle": None}, r"exactly one of ak_handle and ak_context"),
    ({"ak_context": "x.ctx"}, r"exactly one of ak_handle and ak_context"),
    ({"ak_handle": "0x01000000"}, r"ak_handle must be a handle"),
    ({"certificates": []}, r"needs the AK certificate"),
    ({"certificates": ["/nonexistent/ak.pem"]}, r"cannot read the AK certificate file"),
    ({"pcrs": [24]}, r"PCR indices 0-23"),
    ({"pcr_bank": "md5"}, r"unknown PCR bank"),
])
def test_attester_settings(tpm_env, settings, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TpmAttester(**tpm_env.attester_settings(**settings))


def test_attester_binding_size(tpm_env):
    with pytest.raises(ValueError, match=r"1 to 64 bytes"):
        tpm_env.attester().attest(b"\0" * 65)
    with pytest.raises(TypeError):
        tpm_env.attester().attest("00" * 32)


def test_verifier_settings(tmp_path):
    with pytest.raises(ConfigError, match=r"at least one CA"):
        TpmVerifier(ca_certificates=[])
    with pytest.raises(ConfigError, match=r"cannot read"):
        TpmVerifier(ca_certificates=[tmp_path / "missing.pem"])
    (tmp_path / "bad.pem").write_text("nothing")
    with pytest.raises(ConfigError, match=r"no valid PEM"):
        TpmVerifier(ca_certificates=[tmp_path / "bad.pem"])


# -- the parser on a fixed vector ------------------------------------------------------------------------------

# Captured from swtpm 0.7.1 with tpm2-tools 5.4: `tpm2_quote -c 0x81000003 -l sha256:0,1,2,3,4,5,6,7,16
# -q 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff -m msg -s sig` after PCR 16 was
# extended twice with 32 bytes of 0xaa; AK made with `tpm2_createak -G ecc -g sha256 -s ecdsa`, its public
# key from `tpm2_readpublic -f pem`.
FIXED_QUOTE = bytes.fromhex(
    "ff54434780180022000b6b5e649d677bf13eedcd909236bf88b1cd2620142d31fbe3ce81d48f47edb62c0020001122334455"
    "66778899aabbccddeeff00112233445566778899aabbccddeeff000000000000139f0000000100000000012019102300163636"
    "00000001000b03ff000100200acc841b6ff7cff60aa97f33adefaa4a3c3dc4327102550c8ccc71c287f90b0f")
FIXED_SIGNATURE = bytes.fromhex(
    "0018000b00200e56894de1443f27b8f3aff39bb9b3b1d00f45a4902e84ba714c3c943cfe2c1100205fdaedf6283ca37237e9"
    "f32a637d2720eda2d487fd29417cff7a6c424f7ff333")
FIXED_AK = (b"-----BEGIN PUBLIC KEY-----\n"
            b"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEJZUsyF4XKYFvuvq8bPa0eOMAXeC1\n"
            b"ae1m1R/OVEXd+4eH+7dHcTtMvtrCCVLcND3izF0FdoJF5385VtkpDPhUCA==\n"
            b"-----END PUBLIC KEY-----\n")


def test_parse_fixed_quote():
    quote = parse_quote(FIXED_QUOTE)
    assert quote.extra_data == bytes.fromhex("00112233445566778899aabbccddeeff") * 2
    assert quote.qualified_signer[:2] == b"\x00\x0b" and len(quote.qualified_signer) == 34  # sha256 name
    assert (quote.clock, quote.reset_count, quote.restart_count, quote.safe) == (0x139F, 1, 0, True)
    assert quote.firmware_version == 0x2019102300163636
    assert quote.pcr_selection == (("sha256", (0, 1, 2, 3, 4, 5, 6, 7, 16)),)
    pcr16 = bytes(32)
    for _ in range(2):
        pcr16 = hashlib.sha256(pcr16 + b"\xaa" * 32).digest()
    assert quote.pcr_digest == hashlib.sha256(bytes(32 * 8) + pcr16).digest()


def test_parse_fixed_signature_and_verify_offline():
    signature = parse_signature(FIXED_SIGNATURE)
    assert (signature.algorithm, signature.hash) == ("ecdsa", "sha256")
    key = serialization.load_pem_public_key(FIXED_AK)
    key.verify(signature.value, FIXED_QUOTE, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("data, pattern", [
    (b"", r"truncated: magic"),
    (FIXED_QUOTE[:6] + b"\x00\x50" + FIXED_QUOTE[8:], r"qualifiedSigner claims 80 bytes"),
    (FIXED_QUOTE.replace(bytes.fromhex("00000001000b03ff0001"), bytes.fromhex("00000001000903ff0001")),
     r"unsupported PCR bank 0x0009"),
    (FIXED_QUOTE.replace(bytes.fromhex("00000001000b03ff0001"), bytes.fromhex("00000009000b03ff0001")),
     r"selects 9 PCR banks"),
    (FIXED_QUOTE.replace(bytes.fromhex("00000001000b03ff0001"), bytes.fromhex("00000001000b09ff0001")),
     r"PCR select has 9 bytes"),
])
def test_parser_bounds(data, pattern):
    with pytest.raises(AttestationError, match=pattern):
        parse_quote(data)


def test_ca_path_length_is_enforced(tpm_env, quoted, tmp_path):
    # The real intermediate may not have CAs below it (path length 0): a CA it issued cannot certify AKs.
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub_cert = tpm_env.intermediate.issue(sub_key.public_key(), "ppml test sub CA", ca=True)
    sub = TestCa(sub_key, sub_cert, tmp_path / "sub.pem")
    cert = sub.issue(tpm_env.ak_public_key, "ppml-test-vm")
    pems = [cert.public_bytes(serialization.Encoding.PEM).decode(),
            sub_cert.public_bytes(serialization.Encoding.PEM).decode(), tpm_env.intermediate.path.read_text()]
    fails(tpm_env.verifier(), changed(quoted.evidence, certificates=pems), r"allows 0 .*CA")


def test_unknown_critical_extension_is_refused(tpm_env, quoted):
    from cryptography import x509 as x
    from cryptography.hazmat.primitives import hashes as h
    from cryptography.x509.oid import NameOID as N

    base = tpm_env.intermediate.issue(tpm_env.ak_public_key, "ppml-test-vm")
    builder = (x.CertificateBuilder().subject_name(x.Name([x.NameAttribute(N.COMMON_NAME, "ppml-test-vm")]))
               .issuer_name(base.issuer).public_key(tpm_env.ak_public_key).serial_number(x.random_serial_number())
               .not_valid_before(base.not_valid_before_utc).not_valid_after(base.not_valid_after_utc))
    for ext in base.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    odd = builder.add_extension(x.UnrecognizedExtension(x.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
                                critical=True).sign(tpm_env.intermediate.key, h.SHA256())
    pems = [odd.public_bytes(serialization.Encoding.PEM).decode(), tpm_env.intermediate.path.read_text()]
    fails(tpm_env.verifier(), changed(quoted.evidence, certificates=pems), r"critical extensions .*1\.3\.6\.1\.4\.1\.99999\.1")
    pems[0] = base.public_bytes(serialization.Encoding.PEM).decode()
    tpm_env.verifier().verify(changed(quoted.evidence, certificates=pems), at=now())  # the same without it


def test_ak_certificate_extended_key_usage(tpm_env, quoted):
    from cryptography import x509 as x
    from cryptography.hazmat.primitives import hashes as h
    from cryptography.x509.oid import ExtendedKeyUsageOID as EKU

    base = tpm_env.intermediate.issue(tpm_env.ak_public_key, "ppml-test-vm")

    def with_usage(purposes):
        builder = (x.CertificateBuilder().subject_name(base.subject).issuer_name(base.issuer)
                   .public_key(tpm_env.ak_public_key).serial_number(x.random_serial_number())
                   .not_valid_before(base.not_valid_before_utc).not_valid_after(base.not_valid_after_utc))
        for ext in base.extensions:
            builder = builder.add_extension(ext.value, critical=ext.critical)
        cert = builder.add_extension(x.ExtendedKeyUsage(purposes), critical=True).sign(tpm_env.intermediate.key,
                                                                                        h.SHA256())
        return [cert.public_bytes(serialization.Encoding.PEM).decode(), tpm_env.intermediate.path.read_text()]

    aik = x.ObjectIdentifier("2.23.133.8.3")
    tpm_env.verifier().verify(changed(quoted.evidence, certificates=with_usage([aik])), at=now())
    fails(tpm_env.verifier(), changed(quoted.evidence, certificates=with_usage([EKU.SERVER_AUTH])),
          r"extended key usage does not include attestation keys")
