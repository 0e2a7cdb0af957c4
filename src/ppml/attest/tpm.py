"""TPM 2.0 quotes, as a virtual TPM makes them (Azure confidential VMs): parsing and verification.

A TPM quote is a ``TPMS_ATTEST`` structure signed by an attestation key (AK) that lives inside the TPM.
The AK is *restricted*: the TPM refuses to sign outside data that starts with the ``TPM_GENERATED``
magic, so a signed structure that starts with it was made by the TPM itself. A certificate, issued
by a CA the verifier trusts (Azure's vTPM CA, or your own), says that the AK is such a key.

Evidence
--------
``{"type": "tpm", ...}`` with the fields

``quote``
    base64 of the marshalled ``TPMS_ATTEST`` (the contents of ``TPM2B_ATTEST``: what
    ``tpm2_quote -m FILE`` writes).
``signature``
    base64 of the marshalled ``TPMT_SIGNATURE`` (what ``tpm2_quote -s FILE`` writes by default):
    ``sigAlg`` u16, ``hashAlg`` u16, then for ECDSA ``TPM2B r``, ``TPM2B s``; for RSASSA/RSAPSS one
    ``TPM2B`` signature. All integers are big-endian, as everywhere in TPM structures.
``pcrs``
    ``{"sha256": {"0": hex, "7": hex, ...}}``: the value of every PCR the quote selects, per bank.
``certificates``
    PEM of the AK certificate, then any intermediate CA certificates.

Verification: the AK certificate chains to a configured CA (each link's signature, validity at the
given time, CA flag and key usage of issuers); the signature over the quote verifies with the AK
certificate's public key; the quote has the right magic and type; its PCR selection equals the PCRs
supplied; and its ``pcrDigest`` equals the hash (with the signature's hash algorithm, as the TPM
computes it) of the supplied values concatenated in selection order. Only then are the PCR values
proven. The quote's ``extraData`` (qualifying data) carries the request binding.

Claims: ``pcrs``, ``ak_subject``, ``ak_issuer``, ``report_data`` (hex of ``extraData``),
``qualified_signer`` (hex), ``clock``, ``reset_count``, ``restart_count``, ``firmware_version``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from ppml.attest.evidence import Evidence, EvidenceVerifier, VerifiedEvidence, b64decode_field
from ppml.attest.tpm_structures import (
    HINT_EVIDENCE,
    PCR_BANKS,
    PCR_DIGEST_SIZES,
    TpmQuote,
    TpmSignature,
    parse_quote,
    parse_signature,
)
from ppml.errors import AttestationError, ConfigError

__all__ = ["TpmVerifier"]

_BANK_IDS = {name: alg for alg, name in PCR_BANKS.items()}
_SIGNATURE_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}

# Bounds on what a caller may send; real values are far smaller.
_MAX_CERTIFICATES = 8
_MAX_CERTIFICATE_PEM = 16 * 1024
_MIN_RSA_BITS = 2048


# -- certificates --------------------------------------------------------------------------------------------


def _load_anchors(paths: Sequence[str | Path]) -> tuple[x509.Certificate, ...]:
    anchors: list[x509.Certificate] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the TPM CA certificate file {str(path)!r}: {exc.strerror}",
                              hint="set ca_certificates to PEM files of the CAs that issue AK certificates") from None
        try:
            anchors.extend(x509.load_pem_x509_certificates(data))
        except ValueError:
            raise ConfigError(f"the TPM CA certificate file {str(path)!r} holds no valid PEM certificate",
                              hint="convert it to PEM (openssl x509 -inform der -in CA.cer -out CA.pem)") from None
    return tuple(anchors)


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


_TCG_KP_AIK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.3")
# Critical extensions a verifier may process here (RFC 5280 4.2: any other critical one means "refuse").
_UNDERSTOOD = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
               ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.CERTIFICATE_POLICIES}


def _check_validity(cert: x509.Certificate, role: str, at: datetime, *, configured: bool = False) -> None:
    """Validity at ``at``; and, for certificates the evidence brought (not the operator's configured CAs),
    no critical extension this verifier does not understand."""
    name = cert.subject.rfc4514_string()
    unknown = [ext.oid.dotted_string for ext in cert.extensions if ext.critical and ext.oid not in _UNDERSTOOD]
    if unknown and not configured:
        raise AttestationError(f"TPM certificate chain: the {role} {name!r} has critical extensions this "
                               f"verifier does not understand ({', '.join(unknown)})",
                               hint="a certificate with unknown critical extensions must be refused (RFC 5280)")
    if at > cert.not_valid_after_utc:
        raise AttestationError(
            f"TPM certificate chain: the {role} {name!r} expired on {cert.not_valid_after_utc.isoformat()}",
            hint="renew the certificate (on Azure, the platform renews the AK certificate in NV index 0x01C101D0)")
    if at < cert.not_valid_before_utc:
        raise AttestationError(
            f"TPM certificate chain: the {role} {name!r} is not valid before "
            f"{cert.not_valid_before_utc.isoformat()}", hint="check the clocks of the attester and verifier")


def _check_issuer(cert: x509.Certificate, role: str, at: datetime, below: int, *, configured: bool = False) -> None:
    """``below`` is the number of CA certificates between this issuer and the AK certificate."""
    _check_validity(cert, role, at, configured=configured)
    name = cert.subject.rfc4514_string()
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise AttestationError(f"TPM certificate chain: the {role} {name!r} is not a CA certificate",
                               hint="AK certificates must be issued by a certificate with the CA flag")
    if constraints.path_length is not None and below > constraints.path_length:
        raise AttestationError(f"TPM certificate chain: the {role} {name!r} allows {constraints.path_length} "
                               f"intermediate CAs below it, the chain has {below}",
                               hint="send the chain the CA issued, without extra CAs")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise AttestationError(f"TPM certificate chain: the {role} {name!r} may not sign certificates",
                               hint="AK certificates must be issued by a certificate with keyCertSign usage")


def _signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool | None:
    """True if ``issuer`` signed ``child``; False if its name matches but the signature does not; None."""
    if child.issuer != issuer.subject:
        return None
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _verify_chain(ak_cert: x509.Certificate, intermediates: Sequence[x509.Certificate],
                  anchors: Sequence[x509.Certificate], at: datetime) -> None:
    """Walk from the AK certificate to a configured CA, checking every link explicitly.

    Done by hand because ``cryptography``'s path builder applies web-PKI rules (SAN, EKU) that AK
    certificates do not follow.
    """
    _check_validity(ak_cert, "AK certificate", at)
    try:
        purposes = ak_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if not {_TCG_KP_AIK_CERTIFICATE, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(purposes):
            raise AttestationError("TPM certificate chain: the AK certificate's extended key usage does not "
                                   "include attestation keys (tcg-kp-AIKCertificate, 2.23.133.8.3)",
                                   hint="issue AK certificates for that purpose, or without extended key usage")
    except x509.ExtensionNotFound:
        pass
    try:
        usage = ak_cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise AttestationError("TPM certificate chain: the AK certificate does not allow digital signatures",
                                   hint="issue AK certificates with the digitalSignature key usage")
    except x509.ExtensionNotFound:
        pass
    current, used, mismatched = ak_cert, set(), []
    for depth in range(len(intermediates) + 1):
        for anchor in anchors:
            verdict = _signed_by(current, anchor)
            if verdict:
                _check_issuer(anchor, "CA certificate", at, depth, configured=True)
                return
            if verdict is False:
                mismatched.append(anchor.subject.rfc4514_string())
        for i, candidate in enumerate(intermediates):
            if i not in used and _signed_by(current, candidate):
                _check_issuer(candidate, "intermediate CA certificate", at, depth)
                used.add(i)
                current = candidate
                break
        else:
            break
    detail = (f"its signature does not verify with the configured CA {mismatched[0]!r} of the same name"
              if mismatched else "no configured CA issued it")
    raise AttestationError(
        f"TPM certificate chain: untrusted issuer {current.issuer.rfc4514_string()!r} of "
        f"{current.subject.rfc4514_string()!r}: {detail}",
        hint="add the CA that issues AK certificates to ca_certificates, and send intermediate CAs after "
             "the AK certificate")


# -- the verifier --------------------------------------------------------------------------------------------


def _verify_signature(cert: x509.Certificate, signature: TpmSignature, message: bytes) -> None:
    key = cert.public_key()
    digest = _SIGNATURE_HASHES[signature.hash]()
    try:
        if signature.algorithm == "ecdsa":
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise AttestationError("TPM quote signature is ECDSA but the AK certificate holds a non-EC key",
                                       hint="send the certificate of the key that signed the quote")
            key.verify(signature.value, message, ec.ECDSA(digest))
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                raise AttestationError("TPM quote signature is RSA but the AK certificate holds a non-RSA key",
                                       hint="send the certificate of the key that signed the quote")
            if key.key_size < _MIN_RSA_BITS:
                raise AttestationError(f"TPM AK is a {key.key_size}-bit RSA key, fewer than {_MIN_RSA_BITS} bits",
                                       hint="use an RSA-2048 or ECC P-256 attestation key")
            pad = (padding.PKCS1v15() if signature.algorithm == "rsassa"
                   else padding.PSS(padding.MGF1(digest), padding.PSS.AUTO))
            key.verify(signature.value, message, pad, digest)
    except InvalidSignature:
        raise AttestationError(
            "TPM quote signature invalid: it does not verify with the AK certificate's public key",
            hint="the quote was altered or signed by another key; make new evidence with the certified AK") from None


def _supplied_pcrs(value: object, quote: TpmQuote) -> dict[str, dict[str, str]]:
    """The supplied PCR values, checked against the quote's selection, normalised to lowercase hex."""
    if not isinstance(value, Mapping):
        raise AttestationError("tpm evidence lacks the field 'pcrs' ({bank: {index: hex}})", hint=HINT_EVIDENCE)
    selected = {bank: indices for bank, indices in quote.pcr_selection if indices}
    if set(value) != set(selected):
        raise AttestationError(
            f"TPM PCR banks supplied ({', '.join(sorted(map(str, value))) or 'none'}) differ from the banks "
            f"the quote selects ({', '.join(sorted(selected)) or 'none'})", hint=HINT_EVIDENCE)
    result: dict[str, dict[str, str]] = {}
    for bank, indices in selected.items():
        values = value[bank]
        if not isinstance(values, Mapping) or set(values) != {str(i) for i in indices}:
            supplied = sorted(values, key=str) if isinstance(values, Mapping) else "none"
            raise AttestationError(
                f"TPM PCRs supplied for the {bank} bank ({supplied}) differ from those the quote selects "
                f"({list(indices)})", hint=HINT_EVIDENCE)
        result[bank] = {}
        for i in indices:
            text = values[str(i)]
            try:
                raw = bytes.fromhex(text) if isinstance(text, str) else None
            except ValueError:
                raw = None
            if raw is None or len(raw) != PCR_DIGEST_SIZES[bank]:
                raise AttestationError(f"TPM PCR {bank}:{i} is not {PCR_DIGEST_SIZES[bank]} bytes of hex",
                                       hint=HINT_EVIDENCE)
            result[bank][str(i)] = raw.hex()
    return result


def _b64_field(payload: Mapping[str, Any], name: str) -> bytes:
    try:
        return b64decode_field(payload, name, evidence_type="tpm")
    except AttestationError as exc:
        raise AttestationError(exc.message, hint=HINT_EVIDENCE) from None


class TpmVerifier(EvidenceVerifier):
    """Verifies TPM 2.0 quotes signed by a certified attestation key.

    Parameters
    ----------
    ca_certificates
        PEM files (each may hold several certificates) of the CAs that AK certificates must chain to,
        e.g. Azure's "Azure Virtual TPM Root Certificate Authority 2023". Required.
    pcr_bank
        The PCR bank the quote must cover (``sha1``, ``sha256``, ``sha384`` or ``sha512``).

    Notes
    -----
    A certificate only makes quotes trustworthy if the CA certifies restricted TPM-resident keys;
    configure only such CAs. The verifier holds no mutable state and is safe to share between threads.
    """

    type: ClassVar[str] = "tpm"

    def __init__(self, *, ca_certificates: Sequence[str | Path] | str | Path, pcr_bank: str = "sha256") -> None:
        if isinstance(ca_certificates, (str, Path)):
            ca_certificates = [ca_certificates]
        if not ca_certificates:
            raise ConfigError("the tpm verifier needs at least one CA certificate (ca_certificates)",
                              hint="set ca_certificates to PEM files of the CAs that issue AK certificates")
        if pcr_bank not in PCR_DIGEST_SIZES:
            raise ConfigError(f"unknown PCR bank {pcr_bank!r} for the tpm verifier",
                              hint="set pcr_bank to one of: " + ", ".join(PCR_DIGEST_SIZES))
        self._anchors = _load_anchors(ca_certificates)
        self.pcr_bank = pcr_bank

    def _verify(self, evidence: Evidence, *, at: datetime) -> VerifiedEvidence:
        """Verify a TPM quote as of ``at``; see the module docstring for the checks and claims."""
        payload = evidence.payload
        quote_bytes = _b64_field(payload, "quote")
        signature = parse_signature(_b64_field(payload, "signature"))
        ak_cert, intermediates = self._certificates(payload.get("certificates"))

        _verify_chain(ak_cert, intermediates, self._anchors, at)
        quote = parse_quote(quote_bytes)
        _verify_signature(ak_cert, signature, quote_bytes)

        pcrs = _supplied_pcrs(payload.get("pcrs"), quote)
        if self.pcr_bank not in pcrs:
            raise AttestationError(f"TPM quote does not cover the {self.pcr_bank} PCR bank",
                                   hint=f"quote PCRs of the {self.pcr_bank} bank, or change pcr_bank")
        # The TPM hashes the selected PCRs with the signing scheme's hash, whatever the bank.
        concatenated = b"".join(bytes.fromhex(pcrs[bank][str(i)]) for bank, indices in quote.pcr_selection
                                for i in indices)
        expected = hashlib.new(signature.hash, concatenated).digest()
        if not hmac.compare_digest(expected, quote.pcr_digest):
            raise AttestationError("TPM PCR digest mismatch: the supplied PCR values are not those the TPM quoted",
                                   hint="send the PCR values read together with the quote")

        claims: dict[str, Any] = {
            "pcrs": pcrs,
            "ak_subject": ak_cert.subject.rfc4514_string(),
            "ak_issuer": ak_cert.issuer.rfc4514_string(),
            "report_data": quote.extra_data.hex(),
            "qualified_signer": quote.qualified_signer.hex(),
            "clock": quote.clock,
            "reset_count": quote.reset_count,
            "restart_count": quote.restart_count,
            "firmware_version": quote.firmware_version,
        }
        warnings = () if quote.safe else ("the TPM clock is not marked safe: it may have run backwards",)
        return VerifiedEvidence(self.type, claims, quote.extra_data, f"tpm ak={_common_name(ak_cert)}",
                                warnings=warnings)

    @staticmethod
    def _certificates(value: object) -> tuple[x509.Certificate, list[x509.Certificate]]:
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise AttestationError("tpm evidence lacks the field 'certificates' (a list of PEM strings, "
                                   "AK certificate first)", hint=HINT_EVIDENCE)
        if len(value) > _MAX_CERTIFICATES or any(len(c) > _MAX_CERTIFICATE_PEM for c in value):
            raise AttestationError(f"tpm evidence has too many or too large certificates (at most "
                                   f"{_MAX_CERTIFICATES} of {_MAX_CERTIFICATE_PEM} bytes)", hint=HINT_EVIDENCE)
        certs = []
        for i, pem in enumerate(value):
            try:
                certs.append(x509.load_pem_x509_certificate(pem.encode()))
            except ValueError:
                role = "the AK certificate" if i == 0 else f"intermediate certificate {i}"
                raise AttestationError(f"tpm evidence: {role} is not a valid PEM certificate",
                                       hint=HINT_EVIDENCE) from None
        return certs[0], certs[1:]
