"""A ready-to-run broker folder: TLS certificates, a configuration and a release policy to edit.

The CA and server certificate are for getting started and for private networks; production brokers use
certificates from the organisation's PKI (replace the two files named in ``tls``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ppml.errors import AlreadyExistsError
from ppml.keys import secure_files

__all__ = ["BrokerFolder", "create_broker_folder"]

_CERT_DAYS = 365

_POLICY = """\
# Release policy for {key}: which workloads may receive its data keys (docs/broker.md, "Release policies").
# Evidence must meet every requirement of one rule of its type; types not listed are refused.
name: {name}
keys: ["{key}"]
release_lifetime: 10m
allow:
{simulated}  # An SGX enclave: replace the placeholder with your enclave's signer (or pin mrenclave).
  - type: sgx
    mrsigner: "replace-with-the-hex-mrsigner-of-your-enclave"
    # mrenclave: ["hex", "hex"]
    # isv_prod_id: 1
    # min_isv_svn: 1
    tcb_status: [UpToDate]
  # An Intel TDX confidential VM:
  # - type: tdx
  #   mrtd: "hex"
  # An Azure confidential VM attested by Microsoft Azure Attestation (add the maa verifier to broker.yaml):
  # - type: maa
  #   issuer: https://<provider>.<region>.attest.azure.net
  #   claims: {{x-ms-attestation-type: sevsnpvm, x-ms-compliance-status: azure-compliant-cvm}}
"""
_SIMULATED_RULE = """\
  # DEVELOPMENT ONLY: simulated evidence proves nothing. Remove this rule (and the simulated verifier in
  # broker.yaml) before any real data is involved.
  - type: simulated
    claims: {app: my-job}
"""
_CONFIG = """\
# ppml key broker configuration (docs/broker.md, "Configuration"). Relative paths are relative to this file.
listen: {{host: "{listen}", port: {port}}}
tls: {{certificate: tls/broker.pem, private_key: tls/broker-key.pem}}
kms:
  - {{backend: local, keystore: "{keystore}", passphrase: "{passphrase}"}}
verifiers:
  sgx: {{}}
  tdx: {{}}
{simulated}policies: [policies/]
audit_log: audit/broker.jsonl
limits: {{max_request_bytes: 262144, requests_per_second: 20, burst: 40, nonce_lifetime: 60s}}
key_cache: 5m
"""


@dataclass(frozen=True)
class BrokerFolder:
    config: Path
    ca_certificate: Path
    policy: Path
    url: str


def _certificates(names: list[str]) -> tuple[bytes, bytes, bytes]:
    """A CA certificate, a server certificate for ``names`` (DNS names or IP addresses) and its key (PEM)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ppml key broker CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
              .add_extension(x509.SubjectAlternativeName(alt), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), server.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def create_broker_folder(folder: str | Path, *, key_reference: str, keystore: str, passphrase: str,
                         hosts: list[str] | None = None, listen: str = "127.0.0.1", port: int = 8443,
                         simulated: bool = False) -> BrokerFolder:
    """Write ``broker.yaml``, ``tls/`` (CA, server certificate, 0600 key) and ``policies/<key>.yaml``.

    ``passphrase`` is the key store passphrase *source* (``env:VAR``, ``file:PATH``...), never a value.
    Refuses to overwrite an existing ``broker.yaml``.
    """
    folder = Path(folder)
    config = folder / "broker.yaml"
    if config.exists():
        raise AlreadyExistsError(f"{config} already exists", hint="choose another folder, or edit that one")
    names = hosts or ["localhost", "127.0.0.1", socket.gethostname()]
    ca_pem, cert_pem, key_pem = _certificates(list(dict.fromkeys(names)))
    (folder / "tls").mkdir(parents=True, exist_ok=True)
    (folder / "tls" / "ca.pem").write_bytes(ca_pem)
    (folder / "tls" / "broker.pem").write_bytes(cert_pem + ca_pem)
    secure_files.write_private(folder / "tls" / "broker-key.pem", key_pem)
    policy_name = key_reference.split(":", 1)[-1].replace("/", "-") or "keys"
    policy = folder / "policies" / f"{policy_name}.yaml"
    policy.parent.mkdir(exist_ok=True)
    policy.write_text(_POLICY.format(name=policy_name, key=key_reference,
                                     simulated=_SIMULATED_RULE if simulated else ""))
    (folder / "audit").mkdir(mode=0o700, exist_ok=True)
    config.write_text(_CONFIG.format(listen=listen, port=port, keystore=keystore, passphrase=passphrase,
                                     simulated="  simulated: {}  # DEVELOPMENT ONLY\n" if simulated else ""))
    host = names[0] if listen in ("0.0.0.0", "::") else listen
    return BrokerFolder(config, folder / "tls" / "ca.pem", policy, f"https://{host}:{port}")
