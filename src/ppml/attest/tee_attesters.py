"""Attesters that run inside a TEE: SGX enclaves under Gramine, Intel TDX guests, or any external tool.

* ``sgx-gramine``: Gramine's attestation pseudo-files. The binding goes into ``user_report_data``
  (64 bytes: the 32-byte binding, then zeros); ``quote`` then holds an SGX DCAP quote over it.
* ``tdx``: the Linux configfs-tsm interface (``/sys/kernel/config/tsm/report``, kernel 6.7+): a report
  entry gets the same 64 bytes as ``inblob`` and yields a TDX quote as ``outblob``.
* ``command``: runs a program that prints JSON evidence on stdout; it receives the binding as hex in
  ``$PPML_ATTESTATION_BINDING`` (for an Azure vTPM + MAA client, an SEV-SNP tool, ...).

The SGX and TDX attesters can attach Intel collateral for the broker to check the quote against, fetched
from a PCCS or Intel PCS (``pccs_url``), so a broker needs no network access of its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ppml.attest.attester import Attester
from ppml.attest.evidence import MAX_EVIDENCE_SIZE, Evidence
from ppml.errors import AttestationError, ConfigError

__all__ = ["GramineSgxAttester", "TdxAttester", "CommandAttester"]

REPORT_DATA_SIZE = 64
BINDING_ENV = "PPML_ATTESTATION_BINDING"


def _report_data(binding: bytes) -> bytes:
    if len(binding) != 32:
        raise ValueError(f"binding must be 32 bytes (binding_digest), not {len(binding)}")
    return bytes(binding) + bytes(REPORT_DATA_SIZE - len(binding))


def _quote_evidence(evidence_type: str, quote: bytes, pccs_url: str | None) -> Evidence:
    """Quote evidence, with the quote's collateral from ``pccs_url`` when one is configured."""
    collateral = _collateral(pccs_url, quote) if pccs_url else None
    return Evidence(evidence_type, {"quote": base64.b64encode(quote).decode(),
                                    **({"collateral": collateral} if collateral else {})})


def _collateral(pccs_url: str, quote: bytes) -> dict[str, Any]:
    import dcap_qvl

    async def fetch():
        return await dcap_qvl.get_collateral(pccs_url, quote)

    try:
        return json.loads(asyncio.run(fetch()).to_json())
    except Exception as exc:  # the Rust client raises plain exceptions for network and PCCS errors
        raise AttestationError(f"cannot fetch collateral for the quote from {pccs_url}: {exc}",
                               hint="check pccs_url and that this machine reaches it") from None


class GramineSgxAttester(Attester):
    """SGX DCAP quotes from inside a Gramine enclave.

    Parameters
    ----------
    device
        Gramine's attestation folder (default ``/dev/attestation``).
    pccs_url
        PCCS or Intel PCS to fetch the quote's collateral from and attach to the evidence (optional).
    """

    name = "sgx-gramine"

    def __init__(self, device: str = "/dev/attestation", pccs_url: str | None = None) -> None:
        self.device = Path(device)
        self.pccs_url = pccs_url

    def attest(self, binding: bytes) -> Evidence:
        report_data = _report_data(binding)
        if not (self.device / "quote").exists():
            raise AttestationError(f"no SGX attestation interface at {self.device}",
                                   hint="run inside a Gramine SGX enclave with sgx.remote_attestation = \"dcap\" "
                                        "in the manifest, or choose another attester")
        try:
            (self.device / "user_report_data").write_bytes(report_data)
            quote = (self.device / "quote").read_bytes()
        except OSError as exc:
            raise AttestationError(f"Gramine refused a quote at {self.device}: {exc.strerror}",
                                   hint="is the enclave built with DCAP remote attestation?") from None
        return _quote_evidence("sgx", quote, self.pccs_url)


class TdxAttester(Attester):
    """TDX quotes from inside a TD through configfs-tsm.

    Parameters
    ----------
    tsm
        The configfs-tsm report folder (default ``/sys/kernel/config/tsm/report``).
    pccs_url
        PCCS or Intel PCS to fetch the quote's collateral from and attach to the evidence (optional).
    """

    name = "tdx"

    def __init__(self, tsm: str = "/sys/kernel/config/tsm/report", pccs_url: str | None = None) -> None:
        self.tsm = Path(tsm)
        self.pccs_url = pccs_url

    def attest(self, binding: bytes) -> Evidence:
        report_data = _report_data(binding)
        if not self.tsm.is_dir():
            raise AttestationError(f"no configfs-tsm report interface at {self.tsm}",
                                   hint="run inside a TDX guest with Linux 6.7 or later and configfs mounted "
                                        "(mount -t configfs none /sys/kernel/config), or choose another attester")
        entry = self.tsm / f"ppml-{uuid.uuid4().hex}"
        try:
            entry.mkdir()
            try:
                (entry / "inblob").write_bytes(report_data)
                quote = (entry / "outblob").read_bytes()
                provider = (entry / "provider").read_text().strip() if (entry / "provider").exists() else "tdx_guest"
            finally:
                entry.rmdir()
        except OSError as exc:
            raise AttestationError(f"the TEE refused a quote through {self.tsm}: {exc.strerror}") from None
        if provider != "tdx_guest":
            raise AttestationError(f"configfs-tsm at {self.tsm} is served by {provider!r}, not a TDX guest",
                                   hint="on SEV-SNP guests use an MAA or vTPM attester through 'command'")
        return _quote_evidence("tdx", quote, self.pccs_url)


class CommandAttester(Attester):
    """Evidence from an external program.

    Parameters
    ----------
    argv
        The program and its arguments (no shell). It gets the binding as hex in
        ``$PPML_ATTESTATION_BINDING`` and must print one JSON evidence document (``{"type": ...}``).
    timeout
        Seconds to wait for it.
    """

    name = "command"

    def __init__(self, argv: Sequence[str], timeout: float = 60.0) -> None:
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError("the command attester's argv must be a list of strings, e.g. "
                              "[\"/opt/attest/get-evidence\", \"--format\", \"ppml\"]")
        self.argv = list(argv)
        self.timeout = timeout

    def attest(self, binding: bytes) -> Evidence:
        _report_data(binding)  # checks the size
        env = {**os.environ, BINDING_ENV: bytes(binding).hex()}
        try:
            result = subprocess.run(self.argv, env=env, capture_output=True, timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise ConfigError(f"the attestation command {self.argv[0]} does not exist") from None
        except subprocess.TimeoutExpired:
            raise AttestationError(f"the attestation command {self.argv[0]} did not finish in {self.timeout:g} s") from None
        if result.returncode != 0:
            tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise AttestationError(f"the attestation command {self.argv[0]} failed with exit code "
                                   f"{result.returncode}: {tail[0][:300]}")
        if len(result.stdout) > MAX_EVIDENCE_SIZE:
            raise AttestationError(f"the attestation command {self.argv[0]} printed more than {MAX_EVIDENCE_SIZE} bytes")
        try:
            return Evidence.from_json(json.loads(result.stdout))
        except (ValueError, AttestationError):
            raise AttestationError(f"the attestation command {self.argv[0]} did not print JSON evidence "
                                   "({\"type\": ..., ...})") from None
