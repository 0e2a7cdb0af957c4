"""Intel SGX and TDX quotes (DCAP), verified offline with ``dcap-qvl`` against Intel PCS collateral.

Evidence
--------
``{"type": "sgx" | "tdx", "quote": "<base64 quote>", "collateral": {...}}``. ``collateral`` is the JSON
object that ``dcap_qvl.QuoteCollateralV3.to_json()`` writes (``pck_crl_issuer_chain``, ``root_ca_crl``,
``pck_crl``, ``tcb_info_issuer_chain``, ``tcb_info``, ``tcb_info_signature``, ``qe_identity_issuer_chain``,
``qe_identity``, ``qe_identity_signature``), as fetched from Intel PCS or a PCCS for the quote's FMSPC. It
is ignored when the verifier was given collateral (the operator's, fetched from a PCCS it trusts, wins). Collateral
is signed by Intel and dcap-qvl checks it up to Intel's root CA, which it embeds, so a caller cannot forge it;
but a caller could send an older set still inside its validity window (before a revocation or a TCB
recovery), so brokers that must see revocations promptly configure their own.

Quote layout (little endian)
----------------------------
Header, 48 bytes: ``<HHIHH`` version, attestation key type (2 = ECDSA P-256), TEE type (0 = SGX,
0x81 = TDX), QE SVN, PCE SVN; then QE vendor id (16) and user data (20). The report body follows at offset
48: the SGX enclave report (384 bytes; report data at body offset 320) or the TD report (584 bytes in a v4
quote; report data at body offset 520). Then the 4-byte length of the signature data, the ECDSA signature
over header and body, the attestation key, the quoting enclave's report and its signature, and the PCK
certificate chain.

Verification checks the quote signature, the QE report and its signature, the PCK chain to Intel's root,
the CRLs, the TCB info and QE identity signatures, and that the collateral is valid at the given time; it
then matches the platform's TCB level. The resulting TCB status (``UpToDate``, ``SWHardeningNeeded``,
``ConfigurationNeeded``, ``ConfigurationAndSWHardeningNeeded``, ``OutOfDate``,
``OutOfDateConfigurationNeeded``) is a claim for the policy to judge, not a failure here.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import dcap_qvl

from ppml.attest.evidence import Evidence, EvidenceVerifier, VerifiedEvidence, b64decode_field
from ppml.errors import AttestationError, ConfigError

__all__ = ["SgxVerifier", "TdxVerifier", "TEE_SGX", "TEE_TDX"]

TEE_SGX = 0x00
TEE_TDX = 0x81
_HEADER = struct.Struct("<HHIHH")
_HEADER_SIZE = 48
_TEE_NAMES = {TEE_SGX: "sgx", TEE_TDX: "tdx"}
_UNIX_TIME = re.compile(r"UnixTime\((\d{1,12})\)")

# dcap-qvl reports failures as ValueError("Verification failed: ...") with Rust error texts. These map the
# texts (matched case-insensitively, first match wins) to the check that failed and what the user can do.
_STALE = "fetch fresh collateral for this quote (Intel PCS or a PCCS), or pass --at with the time of stored evidence"
_FAILURES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("issue date is in the future", "not yet valid"), "collateral not yet valid at {at} (issued later)",
     "pass --at with a time inside the collateral's validity, or use collateral issued before the evidence"),
    (("expired", "nextupdate"), "collateral not valid at {at} (expired)", _STALE),
    (("failed to decode quote", "unsupported quote version", "unsupported dcap attestation key type"),
     "the quote cannot be decoded (malformed, truncated or an unsupported version)",
     "send the quote exactly as the quoting enclave produced it"),
    (("revoked",), "a certificate is revoked", "the platform's PCK key is revoked; refuse this platform"),
    (("fmspc mismatch",), "the collateral is for another platform (FMSPC mismatch)",
     "fetch the collateral for this quote's FMSPC {fmspc}"),
    (("qe identity id/version", "qe identity"), "the collateral's QE identity does not fit this quote",
     "fetch the collateral for this quote's TEE type (SGX and TDX collateral differ)"),
    (("no matching tcb level",), "TCB matching failed: no TCB level in the collateral matches this platform",
     "the platform's TCB is older than every level Intel lists: update its firmware and microcode"),
    (("tcb", "tcbinfo"), "the collateral's TCB info check failed", "fetch fresh collateral for this quote"),
    (("certificate", "pck", "unknownissuer", "crl"), "the PCK certificate chain check failed",
     "the quote is not signed by a genuine Intel platform key; refuse it"),
    (("qe report", "qe_report", "qe vendor"), "the quoting enclave's report check failed",
     "the quote was altered or was not made by Intel's quoting enclave; refuse it"),
    (("signature",), "the quote signature check failed",
     "the quote (header, report body or report data) was altered; refuse it"),
)


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_collateral(source: Any, *, what: str, files: bool) -> dcap_qvl.QuoteCollateralV3:
    """Collateral from a JSON object, or (``files``: settings only, never evidence) a JSON file path."""
    error = ConfigError if files else AttestationError
    if files and isinstance(source, (str, Path)):
        try:
            source = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read the collateral file {source}: {reason}") from None
    elif isinstance(source, Mapping):
        source = json.dumps(dict(source))
    else:
        raise error(f"{what} must be a JSON object (dcap-qvl collateral), not {type(source).__name__}")
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(source)
    except ValueError as exc:
        raise error(f"{what} is not dcap-qvl collateral JSON ({_first_line(exc)}): "
                    "pass the object QuoteCollateralV3.to_json() writes") from None


def _first_line(exc: BaseException) -> str:
    """dcap-qvl's error text on one line (its messages carry no key material, only check names and times)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and line.strip() != "Caused by:"]
    text = "; ".join(lines).removeprefix("Verification failed: ")[:300]
    return _UNIX_TIME.sub(lambda m: _iso(datetime.fromtimestamp(int(m[1]), timezone.utc)), text)


class _DcapVerifier(EvidenceVerifier):
    """Shared by :class:`SgxVerifier` and :class:`TdxVerifier`; see the module docstring.

    Parameters
    ----------
    collateral
        Collateral to use when the evidence carries none: a path to a JSON file, or the JSON object.
    """

    _tee_type: ClassVar[int]

    def __init__(self, collateral: str | Path | Mapping[str, Any] | None = None) -> None:
        self._collateral = (None if collateral is None
                            else _load_collateral(collateral, what="the collateral setting", files=True))

    def _verify(self, evidence: Evidence, *, at: datetime) -> VerifiedEvidence:
        quote = b64decode_field(evidence.payload, "quote", evidence_type=self.type)
        version = self._check_header(quote)
        if self._collateral is not None:
            # The operator's collateral wins: a caller could otherwise pick older Intel-signed TCB info or
            # CRLs, still inside their validity, that predate a revocation or a TCB recovery.
            collateral = self._collateral
        elif evidence.payload.get("collateral") is not None:
            collateral = _load_collateral(evidence.payload["collateral"],
                                          what=f"{self.type} evidence field 'collateral'", files=False)
        else:
            raise AttestationError(f"{self.type} evidence carries no collateral and the verifier has none: "
                                   "add 'collateral' to the evidence or configure the verifier's collateral")
        try:
            report = dcap_qvl.verify(quote, collateral, int(at.timestamp()))
        except ValueError as exc:
            raise self._failure(exc, quote, at) from None
        # The measurements come from the report dcap-qvl verified, never from a separately parsed copy.
        verified = json.loads(report.to_json())
        body = verified.get("report", {})
        claims = self._claims(body)
        claims.update(tcb_status=report.status, advisory_ids=list(report.advisory_ids), quote_version=version)
        warnings = (f"{self.type} debug mode: the host can read the TEE's memory",) if claims["debug"] else ()
        return VerifiedEvidence(self.type, claims, bytes.fromhex(claims["report_data"]), self._identity(claims),
                                warnings=warnings)

    def _check_header(self, quote: bytes) -> int:
        if len(quote) < _HEADER_SIZE:
            raise AttestationError(f"the {self.type} quote is {len(quote)} bytes, shorter than its 48-byte header: "
                                   "send the whole quote")
        version, _key_type, tee_type, _qe_svn, _pce_svn = _HEADER.unpack_from(quote)
        if tee_type != self._tee_type:
            name = _TEE_NAMES.get(tee_type)
            kind = {"sgx": "an SGX quote", "tdx": "a TDX quote"}.get(name, "a quote of unknown TEE type")
            advice = f"verify it as {name!r} evidence" if name else "send an SGX or TDX quote"
            raise AttestationError(f"the {self.type} verifier was given {kind} (header TEE type {tee_type:#04x}, "
                                   f"{self.type} is {self._tee_type:#04x}): {advice}")
        return version

    def _failure(self, exc: ValueError, quote: bytes, at: datetime) -> AttestationError:
        detail = _first_line(exc)
        lowered = detail.lower()
        for needles, check, advice in _FAILURES:
            if any(needle in lowered for needle in needles):
                break
        else:
            check, advice = "quote verification failed", "refuse this quote"
        fmspc = "?"
        if "{fmspc}" in advice:
            try:
                fmspc = dcap_qvl.parse_quote(quote).fmspc()
            except ValueError:
                pass
        return AttestationError(f"{self.type} quote refused: {check.format(at=_iso(at))} (dcap-qvl: {detail}): "
                                f"{advice.format(fmspc=fmspc)}")

    @staticmethod
    def _hex(report: Mapping[str, Any], name: str) -> str:
        value = report.get(name)
        if not isinstance(value, str):
            raise AttestationError(f"dcap-qvl's verified report lacks {name!r}: upgrade dcap-qvl or report a bug")
        return value.lower()

    def _claims(self, body: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _identity(self, claims: Mapping[str, Any]) -> str:
        raise NotImplementedError


class SgxVerifier(_DcapVerifier):
    """Verifies SGX ECDSA (DCAP) quotes; see the module docstring.

    Claims: ``mrenclave``, ``mrsigner``, ``isv_prod_id``, ``isv_svn``, ``debug``, ``tcb_status``,
    ``advisory_ids``, ``report_data`` (hex, 64 bytes) and ``quote_version``.
    """

    type = "sgx"
    _tee_type = TEE_SGX

    def _claims(self, body: Mapping[str, Any]) -> dict[str, Any]:
        report = body.get("SgxEnclave")
        if not isinstance(report, Mapping):
            raise AttestationError(f"dcap-qvl verified a non-SGX report ({', '.join(body)}): refuse it")
        attributes = bytes.fromhex(self._hex(report, "attributes"))
        return {
            "mrenclave": self._hex(report, "mr_enclave"),
            "mrsigner": self._hex(report, "mr_signer"),
            "isv_prod_id": int(report["isv_prod_id"]),
            "isv_svn": int(report["isv_svn"]),
            # ATTRIBUTES.FLAGS (first 8 bytes, little endian): bit 1 is DEBUG.
            "debug": bool(attributes[0] & 0x02),
            "report_data": self._hex(report, "report_data"),
        }

    def _identity(self, claims: Mapping[str, Any]) -> str:
        return f"sgx mrenclave={claims['mrenclave'][:16]}… mrsigner={claims['mrsigner'][:16]}…"


class TdxVerifier(_DcapVerifier):
    """Verifies TDX quotes (v4 and v5); see the module docstring.

    Claims: ``mrtd``, ``rtmr0``..``rtmr3``, ``mrseam``, ``mrconfigid``, ``mrowner``, ``debug``,
    ``tcb_status``, ``advisory_ids``, ``report_data`` (hex, 64 bytes) and ``quote_version``.
    """

    type = "tdx"
    _tee_type = TEE_TDX

    def _claims(self, body: Mapping[str, Any]) -> dict[str, Any]:
        # TD10 (TDX 1.0), TD15 (TDX 1.5) and later bodies share the TD 1.0 fields used here.
        report = next((value for name, value in body.items() if name.startswith("TD")), None)
        if not isinstance(report, Mapping):
            raise AttestationError(f"dcap-qvl verified a non-TD report ({', '.join(body)}): refuse it")
        td_attributes = bytes.fromhex(self._hex(report, "td_attributes"))
        return {
            "mrtd": self._hex(report, "mr_td"),
            **{f"rtmr{i}": self._hex(report, f"rt_mr{i}") for i in range(4)},
            "mrseam": self._hex(report, "mr_seam"),
            "mrconfigid": self._hex(report, "mr_config_id"),
            "mrowner": self._hex(report, "mr_owner"),
            # TDATTRIBUTES bit 0 is DEBUG (the TD's state is readable by the host VMM).
            "debug": bool(td_attributes[0] & 0x01),
            "report_data": self._hex(report, "report_data"),
        }

    def _identity(self, claims: Mapping[str, Any]) -> str:
        return f"tdx mrtd={claims['mrtd'][:16]}… mrseam={claims['mrseam'][:16]}…"
