"""Attesters for real TEEs, exercised through the files and programs they talk to.

Gramine's ``/dev/attestation`` is a folder of pseudo-files; here a plain folder stands in for it, holding a
real SGX sample quote, so the test checks what the attester writes and sends, not what SGX would sign.
"""

from __future__ import annotations

import base64
import json
import sys
import warnings
from datetime import datetime, timezone
from typing import Any

import pytest
from attestation_data import ATTESTATION_DATA

from ppml.attest import attester as attester_module
from ppml.attest.attester import Attester, available_attesters, open_attester, register_attester
from ppml.attest.evidence import Evidence, binding_digest, open_verifier
from ppml.errors import AttestationError, ConfigError, PpmlInsecureWarning, UsageError

BINDING = binding_digest(b"\x01" * 32, b"\x02" * 32)


def _here(tmp_path, name: str) -> tuple[dict[str, Any], str | tuple[type[Exception] | tuple, str]]:
    """Settings that work on this machine for attester ``name``, and what attesting then gives: the type of
    the evidence it makes, or, for attesters whose device this machine lacks, the error and the text that
    names the missing device."""
    if name == "simulated":
        return {"claims": {"app": "test"}}, "simulated"
    if name == "command":
        argv = _script(tmp_path, "print(json.dumps({'type': 'simulated', "
                                 "'report_data': os.environ['PPML_ATTESTATION_BINDING']}))\n")
        return {"argv": argv, "timeout": 30}, "simulated"
    if name == "sgx-gramine":
        (tmp_path / "quote").write_bytes(b"\x03\x00" + bytes(46))  # any bytes: the attester does not parse it
        return {"device": str(tmp_path)}, "sgx"
    if name == "tdx":
        return {"tsm": str(tmp_path / "no-tsm")}, (AttestationError, "no configfs-tsm report interface")
    if name == "tpm":
        # Nothing listens on port 1: tpm2-tools say the TPM is unreachable, or, where they are not installed,
        # the attester says to install them.
        return ({"tcti": "swtpm:host=127.0.0.1,port=1", "ak_handle": "0x81000003", "ak_cert_nv_index": "0x01C101D0"},
                ((AttestationError, ConfigError), r"TCTI 'swtpm:host=127\.0\.0\.1,port=1' is unreachable|tpm2_quote"))
    raise AssertionError(f"attester {name!r} has no settings in this test: add them to _here")


@pytest.mark.parametrize("name", available_attesters())
def test_every_registered_attester_opens_and_attests_or_names_its_device(tmp_path, name):
    settings, outcome = _here(tmp_path, name)
    attester = open_attester(name.upper(), **settings)
    assert isinstance(attester, Attester) and attester.name == name
    if isinstance(outcome, str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PpmlInsecureWarning)  # simulated evidence, checked elsewhere
            evidence = attester.attest(BINDING)
        assert evidence.type == outcome
    else:
        error, message = outcome
        with pytest.raises(error, match=message):
            attester.attest(BINDING)


def test_the_registered_attesters_are_the_built_in_ones():
    assert available_attesters() == ["command", "sgx-gramine", "simulated", "tdx", "tpm"]
    with pytest.raises(UsageError, match="unknown attester 'sev'") as info:
        open_attester("sev")
    assert "simulated" in (info.value.hint or "")


@pytest.fixture
def attester_registry(restored_registry):
    return restored_registry(attester_module._ATTESTERS)


class _FixedAttester(Attester):
    name = "Fixed"

    def __init__(self, report_data: str = "00") -> None:
        self.report_data = report_data

    def attest(self, binding: bytes) -> Evidence:
        return Evidence("simulated", {"report_data": self.report_data})


def test_register_attester_adds_a_name_and_refuses_silent_replacement(attester_registry):
    register_attester(_FixedAttester)
    assert "Fixed" in available_attesters()
    attester = open_attester("fixed", report_data="ab")
    assert isinstance(attester, _FixedAttester) and attester.report_data == "ab"
    register_attester(_FixedAttester)  # the same class again is no replacement

    class Impostor(_FixedAttester):
        name = "simulated"

    with pytest.raises(ValueError, match="an attester named 'simulated' is already registered"):
        register_attester(Impostor)
    register_attester(Impostor, replace=True)
    assert isinstance(open_attester("simulated"), Impostor)


def test_a_missing_extra_is_named(attester_registry):
    attester_registry._known["needs-extra"] = ("ppml_no_such_module:Attester", "attest")
    with pytest.raises(ConfigError, match="needs packages that are not installed") as info:
        open_attester("needs-extra")
    assert info.value.hint == "pip install 'ppml[attest]'"


def test_gramine_writes_the_binding_and_sends_the_quote(tmp_path):
    quote = (ATTESTATION_DATA / "sgx_quote").read_bytes()
    (tmp_path / "quote").write_bytes(quote)
    evidence = open_attester("sgx-gramine", device=str(tmp_path)).attest(BINDING)
    assert (tmp_path / "user_report_data").read_bytes() == BINDING + bytes(32)
    assert evidence.type == "sgx" and base64.b64decode(evidence.payload["quote"]) == quote
    assert "collateral" not in evidence.payload


def test_gramine_and_tdx_outside_a_tee_say_so(tmp_path):
    with pytest.raises(AttestationError, match="no SGX attestation interface.*"):
        open_attester("sgx-gramine", device=str(tmp_path / "none")).attest(BINDING)
    with pytest.raises(AttestationError, match="no configfs-tsm report interface"):
        open_attester("tdx", tsm=str(tmp_path / "none")).attest(BINDING)
    with pytest.raises(ValueError, match="32 bytes"):
        open_attester("sgx-gramine", device=str(tmp_path)).attest(b"short")


def _script(tmp_path, body: str):
    script = tmp_path / "attest.py"
    script.write_text("import json, os, sys\n" + body)
    return [sys.executable, str(script)]


def test_command_attester_passes_the_binding_and_reads_json_evidence(tmp_path):
    argv = _script(tmp_path, "print(json.dumps({'type': 'simulated', 'report_data': os.environ['PPML_ATTESTATION_BINDING'],"
                             " 'claims': {'tool': 'x'}}))\n")
    evidence = open_attester("command", argv=argv).attest(BINDING)
    with pytest.warns(Warning):
        verified = open_verifier("simulated").verify(evidence, at=datetime.now(timezone.utc))
    assert verified.binds(b"\x01" * 32, b"\x02" * 32) and verified.claims["tool"] == "x"


@pytest.mark.parametrize(("body", "message"), [
    ("sys.stderr.write('no TPM here\\n'); sys.exit(3)\n", "exit code 3: no TPM here"),
    ("print('hello')\n", "did not print JSON evidence"),
    ("print(json.dumps([1]))\n", "did not print JSON evidence"),
    ("import time; time.sleep(5)\n", "did not finish in 0.5 s"),
])
def test_command_attester_failures_are_named(tmp_path, body, message):
    with pytest.raises(AttestationError, match=message):
        open_attester("command", argv=_script(tmp_path, body), timeout=0.5).attest(BINDING)


def test_command_attester_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="list of strings"):
        open_attester("command", argv="attest --now")
    with pytest.raises(ConfigError, match="does not exist"):
        open_attester("command", argv=[str(tmp_path / "missing")]).attest(BINDING)
