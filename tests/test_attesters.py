"""Attesters for real TEEs, exercised through the files and programs they talk to.

Gramine's ``/dev/attestation`` is a folder of pseudo-files; here a plain folder stands in for it, holding a
real SGX sample quote, so the test checks what the attester writes and sends, not what SGX would sign.
"""

from __future__ import annotations

import base64
import json
import sys

import pytest
from attestation_data import ATTESTATION_DATA

from ppml.attest.attester import available_attesters, open_attester
from ppml.attest.evidence import binding_digest, open_verifier
from ppml.errors import AttestationError, ConfigError, UsageError

BINDING = binding_digest(b"\x01" * 32, b"\x02" * 32)


def test_every_registered_attester_opens():
    assert set(available_attesters()) == {"command", "sgx-gramine", "simulated", "tdx", "tpm"}
    with pytest.raises(UsageError, match="unknown attester"):
        open_attester("sev")


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
        verified = open_verifier("simulated").verify(evidence, at=__import__("datetime").datetime.now())
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
