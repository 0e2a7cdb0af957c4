"""A ready-to-run broker folder: TLS certificates, a configuration, an audit key and a release policy to edit.

The CA and server certificate are for getting started and for private networks; production brokers use
certificates from the organisation's PKI (replace the two files named in ``tls``). The audit key is wrapped
by the key store's primary key ``broker-audit`` (created if missing), which no policy governs; heads go to a
local file, which production replaces with an Azure path on an immutable container.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ppml.broker.audit_key import create_audit_key, public_key_path
from ppml.errors import AlreadyExistsError, UsageError
from ppml.keys import secure_files
from ppml.keys.local import LocalKms
from ppml.keys.settings import read_secret_source

__all__ = ["BrokerFolder", "create_broker_folder", "write_tls_files"]

_CERT_DAYS = 365
_KEY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
AUDIT_KEY_NAME = "broker-audit"

_POLICY = """\
# Release policy for {title}: which workloads may receive its data keys (docs/broker.md, "Release policies").
# Evidence must meet every requirement of one rule of its type; types not listed are refused.
name: {name}
keys: [{key}]
release_lifetime: 10m
allow:
{simulated}  # Every rule must pin the workload, not only the platform (docs/broker.md, "What each requirement
  # proves"). An SGX enclave: replace the placeholder with your enclave's MRENCLAVE, or pin its signer
  # together with its product id (a signer alone admits every enclave it ever signed).
  - type: sgx
    mrenclave: "replace-with-the-hex-mrenclave-of-your-enclave"
    # mrsigner: "hex"
    # isv_prod_id: 1
    # min_isv_svn: 1
    tcb_status: [UpToDate]
  # An Intel TDX confidential VM: its firmware (mrtd) and what runs on it (rtmr1, rtmr2, rtmr3 or mrconfigid):
  # - type: tdx
  #   mrtd: "hex"
  #   rtmr2: "hex"
  # An SEV-SNP confidential VM or container group attested by Microsoft Azure Attestation (add the maa
  # verifier to broker.yaml); its launch measurement or host data names the workload:
  # - type: maa
  #   issuer: https://<provider>.<region>.attest.azure.net
  #   claims: {{x-ms-attestation-type: sevsnpvm, x-ms-sevsnpvm-hostdata: "hex"}}
"""
_SIMULATED_RULE = """\
  # DEVELOPMENT ONLY: simulated evidence proves nothing. Remove this rule (and the simulated verifier in
  # broker.yaml) before any real data is involved.
  - type: simulated
    claims: {app: my-job}
"""
_CONFIG = """\
# ppml key broker configuration (docs/broker.md, "Configuration"). Relative paths are relative to this file.
listen: {{host: {listen}, port: {port}}}
tls: {{certificate: tls/broker.pem, private_key: tls/broker-key.pem}}
kms:
  - {{backend: local, keystore: {keystore}, passphrase: {passphrase}}}
verifiers:
  sgx: {{}}
  tdx: {{}}
{simulated}policies: [policies/]
audit_log: audit/broker.jsonl
audit_key: audit/audit-key.json        # signs every audit entry; publish audit-key.json.pub to auditors
audit_heads: {{sink: "file:audit/heads.jsonl", interval: 10s}}   # production: az://CONTAINER/PATH, immutable
limits: {{max_request_bytes: 262144, requests_per_second: 20, burst: 40, nonce_lifetime: 60s}}
key_cache: 5m
"""


@dataclass(frozen=True)
class BrokerFolder:
    config: Path
    ca_certificate: Path
    policy: Path
    url: str
    audit_key: Path


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
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
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
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), server.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def write_tls_files(folder: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """``ca.pem``, ``broker.pem`` (server certificate for ``names``, then the CA) and ``broker-key.pem``
    (0600) in ``folder``; returns their paths."""
    ca_pem, cert_pem, key_pem = _certificates(names)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "ca.pem", folder / "broker.pem", folder / "broker-key.pem"
    secure_files.write_private(paths[2], key_pem)
    paths[0].write_bytes(ca_pem)
    paths[1].write_bytes(cert_pem + ca_pem)
    return paths


def _url(host: str, port: int) -> str:
    try:
        return f"https://[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"https://{host}:{port}"
    except ValueError:
        return f"https://{host}:{port}"


def create_broker_folder(folder: str | Path, *, key_name: str, keystore: str, passphrase: str,
                         hosts: list[str] | None = None, listen: str = "127.0.0.1", port: int = 8443,
                         simulated: bool = False) -> BrokerFolder:
    """Write ``broker.yaml``, ``tls/`` (CA, server certificate, 0600 key), ``audit/audit-key.json`` (and
    its ``.pub``) and ``policies/<key>.yaml``.

    The broker releases data keys of the local key store's primary key ``key_name``. ``passphrase`` is the
    key store passphrase *source* (``env:VAR``, ``file:PATH``...), never a value; it is read once here, to
    wrap the audit key with the primary key :data:`AUDIT_KEY_NAME` (created if the store lacks it).
    ``hosts`` are the names clients use (the certificate covers them and a specific ``listen`` address).
    Refuses to overwrite any file.
    """
    if not _KEY_NAME.match(key_name):
        raise UsageError(f"invalid key name {key_name!r}", hint="use letters, digits, '-', '_' and '.'")
    folder = Path(folder)
    wildcard = listen in ("0.0.0.0", "::")
    names = list(dict.fromkeys((hosts or ["localhost", "127.0.0.1", socket.gethostname()])
                               + ([] if wildcard else [listen])))
    for name in names:
        if not name or len(name) > 253 or not name.isascii():
            raise UsageError(f"invalid host name {name!r} for the broker's certificate",
                             hint="give DNS names or IP addresses with --host")
    policy = folder / "policies" / f"{key_name}.yaml"
    audit_key = folder / "audit" / "audit-key.json"
    targets = [folder / "broker.yaml", folder / "tls" / "ca.pem", folder / "tls" / "broker.pem",
               folder / "tls" / "broker-key.pem", policy, audit_key, public_key_path(audit_key)]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise AlreadyExistsError(f"{', '.join(existing)} already exist(s)",
                                 hint="choose another folder, or edit the files there")
    store = LocalKms(keystore, lambda: read_secret_source(passphrase, what="key store passphrase"))
    if AUDIT_KEY_NAME not in {info.name for info in store.list_keys()}:
        store.create_key(AUDIT_KEY_NAME)
    (folder / "audit").mkdir(mode=0o700, parents=True, exist_ok=True)
    create_audit_key(audit_key, store, AUDIT_KEY_NAME)
    write_tls_files(folder / "tls", names)
    policy.parent.mkdir(exist_ok=True)
    reference = f"local:{key_name}"
    policy.write_text(_POLICY.format(title=reference, name=json.dumps(key_name), key=json.dumps(reference),
                                     simulated=_SIMULATED_RULE if simulated else ""))
    (folder / "broker.yaml").write_text(_CONFIG.format(
        listen=json.dumps(listen), port=port, keystore=json.dumps(keystore), passphrase=json.dumps(passphrase),
        simulated="  simulated: {}  # DEVELOPMENT ONLY\n" if simulated else ""))
    client_host = names[0] if hosts or wildcard else listen
    return BrokerFolder(folder / "broker.yaml", folder / "tls" / "ca.pem", policy, _url(client_host, port), audit_key)
