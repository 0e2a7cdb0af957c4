"""An SGX platform of our own for tests and benchmarks: DCAP quotes bound to any report data, verifiable.

A genuine quote cannot carry a test's nonce (only Intel's keys sign for a real platform), so this builds the
whole DCAP trust chain under a test root CA, from the structure of Intel's sample (``sgx_quote`` and its
collateral in the attestation test vectors): a root, a PCK processor CA, a PCK certificate with the sample's
Intel SGX extension (FMSPC, TCB levels), a TCB signing certificate, CRLs, and the sample's TCB info and QE
identity with validity around the current time, signed again. :meth:`SgxPlatform.quote` makes a v3 quote
over the sample's enclave report (its MRENCLAVE, MRSIGNER, attributes) with the report data given, signed by
an attestation key the sample's QE report (signed again by the PCK key) vouches for. ``dcap-qvl`` verifies
it with :attr:`SgxPlatform.root_der` as the root of trust (``sgx`` verifier setting ``root_ca``), with the
sample's TCB status (``ConfigurationAndSWHardeningNeeded``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtensionOID

_HEADER, _BODY, _REPORT_DATA = 48, 384, 320  # v3 SGX quote: header, enclave report, report data offset in it
_SGX_EXTENSION = "1.2.840.113741.1.13.1"


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _certificate(subject: x509.Name, issuer: x509.Name, public_key, signer, *, ca: bool, now: dt.datetime,
                 extra: list[x509.Extension] = ()) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=30))
               .not_valid_after(now + dt.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                            crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    for extension in extra:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder.sign(signer, hashes.SHA256())


def _crl(issuer: x509.Certificate, key, now: dt.datetime) -> str:
    crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject).last_update(now - dt.timedelta(days=1))
           .next_update(now + dt.timedelta(days=30)).add_extension(x509.CRLNumber(1), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
           .sign(key, hashes.SHA256()))
    return crl.public_bytes(serialization.Encoding.DER).hex()


def _pem(*certificates: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def _dated(document: str, field: str, now: dt.datetime) -> str:
    """A TCB info or QE identity document with issueDate and nextUpdate around ``now`` (then signed again)."""
    outer = json.loads(document)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    outer[field].update(issueDate=(now - dt.timedelta(days=1)).strftime(stamp),
                        nextUpdate=(now + dt.timedelta(days=30)).strftime(stamp))
    return json.dumps(outer[field], separators=(",", ":"))


@dataclass
class SgxPlatform:
    """The test platform: its root of trust, collateral, and the keys that sign its quotes."""

    root_der: bytes
    collateral: dict
    _prefix: bytes  # the quote's header and enclave report up to the report data
    _suffix: bytes  # the QE report, its signature, the QE authentication data and the PCK chain
    _attestation_key: ec.EllipticCurvePrivateKey

    @classmethod
    def from_sample(cls, quote_path: Path, collateral_path: Path) -> SgxPlatform:
        quote = quote_path.read_bytes()
        sample = json.loads(collateral_path.read_text())
        now = dt.datetime.now(dt.timezone.utc)
        offset = _HEADER + _BODY + 4 + 64 + 64
        qe_report = quote[offset:offset + _BODY]
        auth_size = struct.unpack_from("<H", quote, offset + _BODY + 64)[0]
        qe_auth = quote[offset + _BODY + 66:offset + _BODY + 66 + auth_size]
        chain_at = offset + _BODY + 66 + auth_size + 6
        leaf, intermediate, root = x509.load_pem_x509_certificates(quote[chain_at:].rstrip(b"\0"))
        tcb_signer = x509.load_pem_x509_certificates(sample["tcb_info_issuer_chain"].encode())[0]

        keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("root", "pck_ca", "pck", "tcb", "ak")}
        root_cert = _certificate(root.subject, root.subject, keys["root"].public_key(), keys["root"], ca=True, now=now)
        pck_ca = _certificate(intermediate.subject, root.subject, keys["pck_ca"].public_key(), keys["root"], ca=True,
                              now=now)
        sgx = [e for e in leaf.extensions if e.oid.dotted_string == _SGX_EXTENSION
               or e.oid == ExtensionOID.CRL_DISTRIBUTION_POINTS]
        pck = _certificate(leaf.subject, intermediate.subject, keys["pck"].public_key(), keys["pck_ca"], ca=False,
                           now=now, extra=sgx)
        tcb = _certificate(tcb_signer.subject, root.subject, keys["tcb"].public_key(), keys["root"], ca=False, now=now)
        tcb_info = _dated('{"tcbInfo":' + sample["tcb_info"] + "}", "tcbInfo", now)
        qe_identity = _dated('{"enclaveIdentity":' + sample["qe_identity"] + "}", "enclaveIdentity", now)
        collateral = {
            "pck_crl_issuer_chain": _pem(pck_ca, root_cert), "root_ca_crl": _crl(root_cert, keys["root"], now),
            "pck_crl": _crl(pck_ca, keys["pck_ca"], now), "tcb_info_issuer_chain": _pem(tcb, root_cert),
            "tcb_info": tcb_info, "tcb_info_signature": _raw_signature(keys["tcb"], tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": _pem(tcb, root_cert), "qe_identity": qe_identity,
            "qe_identity_signature": _raw_signature(keys["tcb"], qe_identity.encode()).hex(),
        }
        attestation = keys["ak"].public_key().public_bytes(serialization.Encoding.X962,
                                                           serialization.PublicFormat.UncompressedPoint)[1:]
        report = qe_report[:_REPORT_DATA] + hashlib.sha256(attestation + qe_auth).digest() + bytes(32)
        chain = _pem(pck, pck_ca, root_cert).encode()
        suffix = (attestation + report + _raw_signature(keys["pck"], report) + struct.pack("<H", auth_size) + qe_auth
                  + struct.pack("<HI", 5, len(chain)) + chain)
        return cls(root_cert.public_bytes(serialization.Encoding.DER), collateral,
                   quote[:_HEADER + _REPORT_DATA], suffix, keys["ak"])

    def dumps(self) -> dict:
        """Everything the platform is, as a picklable dictionary (for another process): :meth:`loads`."""
        key = self._attestation_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption())
        return {"root_der": self.root_der, "collateral": self.collateral, "prefix": self._prefix,
                "suffix": self._suffix, "key": key}

    @classmethod
    def loads(cls, state: dict) -> SgxPlatform:
        key = serialization.load_pem_private_key(state["key"], None)
        return cls(state["root_der"], state["collateral"], state["prefix"], state["suffix"], key)

    def quote(self, report_data: bytes) -> bytes:
        """A v3 SGX quote of the sample enclave carrying ``report_data`` (at most 64 bytes, zero-padded)."""
        signed = self._prefix + report_data.ljust(64, b"\0")
        signature_data = _raw_signature(self._attestation_key, signed) + self._suffix
        return signed + struct.pack("<I", len(signature_data)) + signature_data

    def evidence(self, report_data: bytes) -> dict:
        """``sgx`` evidence (quote and collateral) as a caller sends it."""
        import base64

        return {"type": "sgx", "quote": base64.b64encode(self.quote(report_data)).decode(),
                "collateral": self.collateral}
