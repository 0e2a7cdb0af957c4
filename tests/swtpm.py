"""A real software TPM for tests: swtpm on loopback, a certified attestation key, and a test CA.

:func:`start_swtpm` starts ``swtpm socket --tpm2`` on two free loopback ports with its state in a test
folder (a fresh state manufactures itself; no EK certificate is needed). :func:`provision` then makes
what an Azure confidential VM has: an endorsement key, an ECC P-256 restricted signing AK persisted at
a handle, and an AK certificate issued by a test intermediate CA under a test root CA.

Fixtures (import them into a test module, then request them by name)::

    from swtpm import tpm_env  # noqa: F401

    def test_release(tpm_env):
        attester = tpm_env.attester()                 # TpmAttester on the swtpm, certificates set
        verifier = tpm_env.verifier()                 # TpmVerifier trusting tpm_env.ca_path
        open_verifier("tpm", ca_certificates=[tpm_env.ca_path])

``tpm_env`` is session-scoped: one swtpm per test process (each xdist worker gets its own). Tests that
extend PCRs should use the resettable PCR 16 (``tpm_env.reset_pcr(16)``) so they do not disturb others; a test
that needs a PCR policies accept (8-15, which cannot be reset) reads its value with ``read_pcr``.
The fixture skips only if the ``swtpm`` binary is missing; CI installs it.
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Swtpm", "TestCa", "TpmEnv", "start_swtpm", "make_ca", "create_ak", "provision", "tpm_env"]

AK_HANDLE = "0x81000003"  # where Azure keeps its AK, too
OTHER_AK_HANDLE = "0x81000004"  # a second AK that no CA certified
_START_TIMEOUT = 10.0


@dataclass
class Swtpm:
    """A running swtpm. ``tcti`` is what tpm2-tools (``-T``) and ``TpmAttester(tcti=...)`` take."""

    folder: Path
    port: int
    process: subprocess.Popen

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def run(self, tool: str, *args: str) -> str:
        """Run a tpm2-tools command on this TPM; its stdout, or AssertionError with its stderr."""
        done = subprocess.run([tool, "-T", self.tcti, *args], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def flush(self) -> None:
        """Flush transient objects and sessions: without a resource manager they fill the 3 slots (0x902)."""
        for kind in ("-t", "-s", "-l"):
            self.run("tpm2_flushcontext", kind)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _free_port_pair() -> int:
    """A port P such that P and P+1 were both free on loopback a moment ago."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free loopback ports found")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_swtpm(folder: Path) -> Swtpm:
    """Start swtpm with its state in ``folder/state``; retried on new ports if another process took them."""
    state = folder / "state"
    state.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = _free_port_pair()
        log = folder / "swtpm.log"
        process = subprocess.Popen(
            ["swtpm", "socket", "--tpm2",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear",
             "--tpmstate", f"dir={state}", "--log", f"file={log}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT
        # Probe the control port: a connection to the server port would occupy swtpm's single client slot.
        while process.poll() is None and time.monotonic() < deadline:
            if _listening(port + 1):
                return Swtpm(folder, port, process)
            time.sleep(0.02)
        if process.poll() is None:
            process.kill()
            process.wait(5)
            raise RuntimeError(f"swtpm did not listen on 127.0.0.1:{port + 1} within {_START_TIMEOUT} s; see {log}")
    raise RuntimeError(f"swtpm kept exiting at start-up; see {folder / 'swtpm.log'}")


@dataclass
class TestCa:
    """A CA (key and certificate) that issues certificates; ``path`` is its PEM file."""

    __test__ = False  # not a test class, despite the name

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path

    def issue(self, public_key: Any, common_name: str, *, ca: bool = False,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> x509.Certificate:
        """A certificate for ``public_key`` signed by this CA (an AK certificate unless ``ca``)."""
        now = dt.datetime.now(dt.timezone.utc)
        usage = dict(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                     data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                     encipher_only=False, decipher_only=False)
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(self.cert.subject)
                .public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before or now - dt.timedelta(hours=1))
                .not_valid_after(not_after or now + dt.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
                .add_extension(x509.KeyUsage(**usage), critical=True)
                .sign(self.key, hashes.SHA256()))


def make_ca(folder: Path, name: str, *, issuer: TestCa | None = None) -> TestCa:
    """A root CA (``issuer=None``) or an intermediate CA, its PEM written to ``folder/<name>.pem``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=True, crl_sign=True, encipher_only=False,
                                            decipher_only=False), critical=True))
    if issuer is None:
        cert = (builder.issuer_name(subject).add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                .sign(key, hashes.SHA256()))
    else:
        cert = (builder.issuer_name(issuer.cert.subject)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), True).sign(issuer.key, hashes.SHA256()))
    path = folder / f"{name.replace(' ', '-')}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TestCa(key, cert, path)


def create_ak(tpm: Swtpm, folder: Path, handle: str | None = None, *, key_alg: str = "ecc",
              scheme: str = "ecdsa") -> Any:
    """Create a restricted signing AK under an ECC EK; its public key (``cryptography``).

    ``key_alg`` is ``ecc`` (P-256) or ``rsa`` (2048); ``scheme`` ``ecdsa``, ``rsassa`` or ``rsapss``, with
    SHA-256. The AK is persisted at ``handle`` if given; its context file is ``folder/ak.ctx`` either way.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ek, ak = folder / "ek.ctx", folder / "ak.ctx"
    tpm.run("tpm2_createek", "-c", str(ek), "-G", "ecc", "-u", str(folder / "ek.pub"))
    tpm.flush()
    tpm.run("tpm2_createak", "-C", str(ek), "-c", str(ak), "-G", key_alg, "-g", "sha256", "-s", scheme,
            "-u", str(folder / "ak.pem"), "-f", "pem", "-n", str(folder / "ak.name"))
    tpm.flush()
    if handle is not None:
        tpm.run("tpm2_evictcontrol", "-C", "o", "-c", str(ak), handle)
        tpm.flush()
    return serialization.load_pem_public_key((folder / "ak.pem").read_bytes())


@dataclass
class TpmEnv:
    """A provisioned swtpm: AK at :data:`AK_HANDLE` certified by ``intermediate`` under ``root``.

    ``ca_path`` is the root CA PEM a verifier trusts; ``certificates`` are the attester's PEM files
    (AK certificate, intermediate).
    """

    tpm: Swtpm
    folder: Path
    root: TestCa
    intermediate: TestCa
    ak_public_key: Any
    ak_cert: x509.Certificate
    certificates: list[Path]
    other_ak_handle: str = OTHER_AK_HANDLE
    ak_handle: str = AK_HANDLE

    @property
    def tcti(self) -> str:
        return self.tpm.tcti

    @property
    def ca_path(self) -> Path:
        return self.root.path

    def attester_settings(self, **overrides: Any) -> dict[str, Any]:
        """Keyword settings of ``open_attester("tpm", ...)`` for this TPM (PCRs 0-7 and 16)."""
        return {"tcti": self.tcti, "ak_handle": self.ak_handle, "certificates": [str(p) for p in self.certificates],
                "pcrs": [0, 1, 2, 3, 4, 5, 6, 7, 16], **overrides}

    def attester(self, **overrides: Any):
        from ppml.attest.tpm_attester import TpmAttester

        return TpmAttester(**self.attester_settings(**overrides))

    def verifier(self, **overrides: Any):
        from ppml.attest.tpm import TpmVerifier

        return TpmVerifier(**{"ca_certificates": [self.ca_path], **overrides})

    def certify(self, public_key: Any, common_name: str, **options: Any) -> Path:
        """Issue a certificate for ``public_key`` from the intermediate CA; the path of its PEM.

        ``options`` go to :meth:`TestCa.issue` (``not_before``, ``not_after``).
        """
        cert = self.intermediate.issue(public_key, common_name, **options)
        path = self.folder / f"{common_name}-{cert.serial_number:x}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def reset_pcr(self, index: int = 16) -> None:
        """Reset a resettable PCR (16 or 23) to zeros."""
        self.tpm.run("tpm2_pcrreset", str(index))

    def extend_pcr(self, index: int, digest: bytes) -> None:
        """Extend sha256 PCR ``index`` with a 32-byte ``digest``."""
        self.tpm.run("tpm2_pcrextend", f"{index}:sha256={digest.hex()}")

    def read_pcr(self, index: int) -> str:
        """The sha256 PCR ``index`` now (lowercase hex)."""
        out = self.folder / f"pcr-{index}.bin"
        self.tpm.run("tpm2_pcrread", f"sha256:{index}", "-o", str(out))
        return out.read_bytes().hex()


def provision(folder: Path) -> TpmEnv:
    """Start swtpm in ``folder``, create and certify the AK (and an uncertified second AK)."""
    tpm = start_swtpm(folder)
    try:
        ak_public_key = create_ak(tpm, folder / "ak", AK_HANDLE)
        create_ak(tpm, folder / "other-ak", OTHER_AK_HANDLE)
        root = make_ca(folder, "ppml test vTPM root CA")
        intermediate = make_ca(folder, "ppml test vTPM intermediate CA", issuer=root)
        ak_cert = intermediate.issue(ak_public_key, "ppml-test-vm")
        ak_cert_path = folder / "ak-cert.pem"
        ak_cert_path.write_bytes(ak_cert.public_bytes(serialization.Encoding.PEM))
    except BaseException:
        tpm.stop()
        raise
    return TpmEnv(tpm, folder, root, intermediate, ak_public_key, ak_cert, [ak_cert_path, intermediate.path])


@pytest.fixture(scope="session")
def tpm_env(tmp_path_factory) -> TpmEnv:
    """A provisioned swtpm for the whole session, stopped at teardown; skips if swtpm is not installed."""
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm is not installed (apt-get install swtpm swtpm-tools tpm2-tools)")
    env = provision(tmp_path_factory.mktemp("swtpm"))
    yield env
    env.tpm.stop()
