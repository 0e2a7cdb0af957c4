"""The ``tpm`` attester: TPM 2.0 quotes made with the tpm2-tools command line.

Runs ``tpm2_quote`` against a TPM (a confidential VM's vTPM, a hardware TPM or ``swtpm``) with the
request binding as qualifying data, and packs the quote, signature, PCR values and attestation-key (AK)
certificates as ``tpm`` evidence (format: :mod:`ppml.attest.tpm`).

On an Azure confidential VM the AK is persisted at handle ``0x81000003`` and its certificate is kept in
NV index ``0x01C101D0`` (DER)::

    open_attester("tpm", ak_handle="0x81000003", ak_cert_nv_index="0x01C101D0",
                  certificates=["global-virtual-tpm-ca.pem"])

Requires the ``tpm2-tools`` package (``apt-get install tpm2-tools``) and access to the TPM device
(``/dev/tpmrm0`` is usually readable by the ``tss`` group).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ppml.attest.attester import Attester
from ppml.attest.evidence import Evidence
from ppml.attest.tpm_structures import PCR_BANKS, PCR_DIGEST_SIZES, parse_quote, parse_signature
from ppml.errors import AttestationError, ConfigError

__all__ = ["TpmAttester", "AZURE_AK_HANDLE", "AZURE_AK_CERT_NV_INDEX"]

AZURE_AK_HANDLE = 0x81000003
AZURE_AK_CERT_NV_INDEX = 0x01C101D0

_DEFAULT_TCTI = "device:/dev/tpmrm0"
_INSTALL_HINT = "install tpm2-tools (apt-get install tpm2-tools) and make sure its tools are on PATH"
_MAX_BINDING = 64  # TPM2B_DATA holds at most the largest digest
_QUOTE_ATTEMPTS = 3


def _parse_handle(value: int | str, setting: str, low: int, high: int) -> int:
    try:
        number = value if isinstance(value, int) else int(str(value), 16)
    except ValueError:
        number = -1
    if not low <= number <= high:
        raise ConfigError(f"{setting} must be a handle between 0x{low:08x} and 0x{high:08x}, not {value!r}",
                          hint=f"for an Azure confidential VM use {setting}=0x"
                               f"{AZURE_AK_HANDLE if setting == 'ak_handle' else AZURE_AK_CERT_NV_INDEX:08x}")
    return number


def _der_length(data: bytes) -> int:
    """Length of the DER element at the start of ``data``: NV indices may be larger than the certificate."""
    if len(data) < 2 or data[0] != 0x30:
        return -1
    if data[1] < 0x80:
        return 2 + data[1]
    count = data[1] & 0x7F
    if not 1 <= count <= 4 or len(data) < 2 + count:
        return -1
    return 2 + count + int.from_bytes(data[2:2 + count], "big")


class TpmAttester(Attester):
    """Makes ``tpm`` evidence with ``tpm2_quote``.

    Parameters
    ----------
    tcti
        How tpm2-tools reach the TPM: ``device:/dev/tpmrm0`` (kernel resource manager),
        ``swtpm:host=127.0.0.1,port=2321``, ``tabrmd``... Default: ``$TPM2TOOLS_TCTI`` or
        ``device:/dev/tpmrm0``.
    ak_handle
        Persistent handle of the AK (``"0x81000003"`` on Azure). Give this or ``ak_context``.
    ak_context
        Path of an AK context file (``tpm2_createak -c``, or a serialized handle from
        ``tpm2_evictcontrol -o``).
    certificates
        PEM files: the AK certificate, then intermediate CAs. With ``ak_cert_nv_index`` only the
        intermediates.
    ak_cert_nv_index
        NV index holding the AK certificate as DER (``"0x01C101D0"`` on Azure), read with
        ``tpm2_nvread`` once per attester.
    pcrs
        PCR indices to quote (default 0-7).
    pcr_bank
        PCR bank to quote (default ``sha256``).
    scheme
        Signing scheme (``ecdsa``, ``rsassa``, ``rsapss``) when the AK's own scheme is not the one
        tpm2_quote picks by default (an RSAPSS AK needs ``rsapss``). Default: tpm2_quote's choice.
    timeout
        Seconds to wait for each tpm2-tools command.

    Notes
    -----
    Without a resource manager (``swtpm``, ``/dev/tpm0``) objects loaded from a context file stay in the
    TPM's three object slots after the tool exits (error 0x902 later), so the attester flushes the
    transient handles its own quote created. Persistent handles need no flushing.
    """

    name: ClassVar[str] = "tpm"

    def __init__(self, *, tcti: str | None = None, ak_handle: int | str | None = None,
                 ak_context: str | Path | None = None, certificates: Sequence[str | Path] = (),
                 ak_cert_nv_index: int | str | None = None, pcrs: Sequence[int] = tuple(range(8)),
                 pcr_bank: str = "sha256", scheme: str | None = None, timeout: float = 30.0) -> None:
        self.tcti = tcti or os.environ.get("TPM2TOOLS_TCTI") or _DEFAULT_TCTI
        if (ak_handle is None) == (ak_context is None):
            raise ConfigError("the tpm attester needs exactly one of ak_handle and ak_context",
                              hint=f"on an Azure confidential VM use ak_handle=0x{AZURE_AK_HANDLE:08x}")
        if ak_handle is not None:
            self._ak = f"0x{_parse_handle(ak_handle, 'ak_handle', 0x81000000, 0x81FFFFFF):08x}"
        else:
            if not Path(ak_context).is_file():
                raise ConfigError(f"the AK context file {str(ak_context)!r} does not exist",
                                  hint="set ak_context to the file tpm2_createak -c or tpm2_evictcontrol -o wrote")
            self._ak = str(ak_context)
        self._flush_transients = ak_context is not None and not re.match(r"(device:/dev/tpmrm|tabrmd)", self.tcti)
        self._nv_index = (None if ak_cert_nv_index is None
                          else _parse_handle(ak_cert_nv_index, "ak_cert_nv_index", 0x01000000, 0x01FFFFFF))
        if isinstance(certificates, (str, Path)):
            certificates = [certificates]
        if self._nv_index is None and not certificates:
            raise ConfigError("the tpm attester needs the AK certificate: set certificates or ak_cert_nv_index",
                              hint=f"on an Azure confidential VM use ak_cert_nv_index=0x{AZURE_AK_CERT_NV_INDEX:08x}")
        self._files_pem = [pem for path in certificates for pem in self._load_pem(path)]
        self._nv_pem: str | None = None
        if pcr_bank not in PCR_BANKS.values():
            raise ConfigError(f"unknown PCR bank {pcr_bank!r}",
                              hint="set pcr_bank to one of: " + ", ".join(PCR_BANKS.values()))
        if not pcrs or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= 23 for i in pcrs):
            raise ConfigError(f"pcrs must be a non-empty list of PCR indices 0-23, not {list(pcrs)!r}",
                              hint="for example pcrs=[0, 1, 2, 3, 4, 5, 6, 7]")
        if scheme not in (None, "ecdsa", "rsassa", "rsapss"):
            raise ConfigError(f"unsupported signing scheme {scheme!r}", hint="use ecdsa, rsassa or rsapss")
        self.pcrs, self.pcr_bank, self.scheme, self.timeout = sorted(set(pcrs)), pcr_bank, scheme, timeout

    @staticmethod
    def _load_pem(path: str | Path) -> list[str]:
        try:
            data = Path(path).read_bytes()
            certs = x509.load_pem_x509_certificates(data)
        except OSError as exc:
            raise ConfigError(f"cannot read the AK certificate file {str(path)!r}: {exc.strerror}",
                              hint="set certificates to PEM files: the AK certificate, then intermediates") from None
        except ValueError:
            raise ConfigError(f"{str(path)!r} holds no valid PEM certificate",
                              hint="convert it to PEM (openssl x509 -inform der -in ak.der -out ak.pem)") from None
        return [c.public_bytes(Encoding.PEM).decode() for c in certs]

    def _run(self, tool: str, *args: str) -> str:
        """Run one tpm2-tools command against the configured TPM; its stdout, or an error naming the TCTI."""
        binary = shutil.which(tool)
        if binary is None:
            raise ConfigError(f"the tpm attester needs {tool}, which is not on PATH", hint=_INSTALL_HINT)
        try:
            done = subprocess.run([binary, "-T", self.tcti, *args], capture_output=True, text=True,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise AttestationError(f"{tool} got no answer from the TPM at TCTI {self.tcti!r} within "
                                   f"{self.timeout:g} s", hint="check that the TPM (or swtpm) is running") from None
        if done.returncode == 0:
            return done.stdout
        # tpm2-tools print only status text to stderr (no key material); keep the informative tail.
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        detail = "; ".join(lines[-3:])[-400:]
        if "Could not load tcti" in done.stderr or "Failed to instantiate TCTI" in done.stderr:
            raise AttestationError(f"the TPM at TCTI {self.tcti!r} is unreachable ({detail})",
                                   hint="check the tcti setting, that the TPM (or swtpm) is running, and that "
                                        "this user may open the device (group tss)")
        hint = "see the tpm2-tools message"
        if "0x18b" in done.stderr.lower() and tool == "tpm2_nvread":
            hint = f"no NV index 0x{self._nv_index:08x}: fix ak_cert_nv_index or give the certificate as a file"
        elif "0x18b" in done.stderr.lower():
            hint = f"no AK at {self._ak}: persist one (tpm2_evictcontrol) or fix ak_handle/ak_context"
        elif "0x902" in done.stderr:
            hint = "the TPM's object slots are full: flush transient objects (tpm2_flushcontext -t)"
        raise AttestationError(f"{tool} failed on the TPM at TCTI {self.tcti!r}: {detail}", hint=hint)

    def _transient_handles(self) -> set[str]:
        return set(re.findall(r"0x[0-9a-fA-F]+", self._run("tpm2_getcap", "handles-transient")))

    def _certificates(self, folder: Path) -> list[str]:
        if self._nv_index is None:
            return list(self._files_pem)
        if self._nv_pem is None:
            der_path = folder / "ak-cert.der"
            self._run("tpm2_nvread", "-C", "o", "-o", str(der_path), f"0x{self._nv_index:08x}")
            data = der_path.read_bytes()
            size = _der_length(data)
            try:
                if not 0 < size <= len(data):
                    raise ValueError
                cert = x509.load_der_x509_certificate(data[:size])
            except ValueError:
                raise AttestationError(f"NV index 0x{self._nv_index:08x} does not hold a DER certificate",
                                       hint="set ak_cert_nv_index to the index holding the AK certificate, or "
                                            "give the certificate as a PEM file in certificates") from None
            self._nv_pem = cert.public_bytes(Encoding.PEM).decode()
        return [self._nv_pem, *self._files_pem]

    def attest(self, binding: bytes) -> Evidence:
        """Quote the configured PCRs with ``binding`` (1-64 bytes, normally 32) as qualifying data."""
        if not isinstance(binding, (bytes, bytearray)):
            raise TypeError(f"binding must be bytes, not {type(binding).__name__}")
        if not 0 < len(binding) <= _MAX_BINDING:
            raise ValueError(f"binding must be 1 to {_MAX_BINDING} bytes (normally 32), not {len(binding)}")
        with tempfile.TemporaryDirectory(prefix="ppml-tpm-") as tmp:
            folder = Path(tmp)
            folder.chmod(0o700)  # mkdtemp already does; said explicitly because the quote files land here
            # tpm2_quote reads the PCRs and quotes them in two commands; a measurement landing in between
            # (IMA extends PCR 10 all the time) makes the values disagree with the quote, so try again.
            for _ in range(_QUOTE_ATTEMPTS):
                quote_bytes, signature, values = self._quote(folder, binding)
                pcrs = self._split_pcrs(quote_bytes, values)
                quote = parse_quote(quote_bytes)
                hash_name = parse_signature(signature).hash
                if hashlib.new(hash_name, values).digest() == quote.pcr_digest:
                    break
            else:
                raise AttestationError(f"the PCRs quoted at TCTI {self.tcti!r} kept changing while they were read",
                                       hint="retry later, or quote PCRs that do not change at run time")
            certificates = self._certificates(folder)
        return Evidence("tpm", {
            "quote": base64.b64encode(quote_bytes).decode(),
            "signature": base64.b64encode(signature).decode(),
            "pcrs": pcrs,
            "certificates": certificates,
        })

    def _quote(self, folder: Path, binding: bytes) -> tuple[bytes, bytes, bytes]:
        """One ``tpm2_quote``: the quote, its signature and the PCR values it read (concatenated)."""
        before = self._transient_handles() if self._flush_transients else set()
        try:
            self._run("tpm2_quote", "-c", self._ak, "-l", f"{self.pcr_bank}:{','.join(map(str, self.pcrs))}",
                      "-q", bytes(binding).hex(), "-m", str(folder / "quote"), "-s", str(folder / "sig"),
                      "-o", str(folder / "pcrs"), "-F", "values", *(["--scheme", self.scheme] if self.scheme else []))
        finally:
            if self._flush_transients:
                for handle in sorted(self._transient_handles() - before):
                    self._run("tpm2_flushcontext", handle)
        return tuple((folder / name).read_bytes() for name in ("quote", "sig", "pcrs"))  # type: ignore[return-value]

    @staticmethod
    def _split_pcrs(quote_bytes: bytes, values: bytes) -> dict[str, Any]:
        """PCR values, ``tpm2_quote -F values`` style (concatenated), split by the quote's own selection."""
        quote = parse_quote(quote_bytes)
        pcrs: dict[str, dict[str, str]] = {}
        offset = 0
        for bank, indices in quote.pcr_selection:
            size = PCR_DIGEST_SIZES[bank]
            for i in indices:
                if offset + size > len(values):
                    raise AttestationError("tpm2_quote wrote fewer PCR values than the quote selects",
                                           hint="upgrade tpm2-tools (5.x is known to work)")
                pcrs.setdefault(bank, {})[str(i)] = values[offset:offset + size].hex()
                offset += size
        if offset != len(values):
            raise AttestationError("tpm2_quote wrote more PCR values than the quote selects",
                                   hint="upgrade tpm2-tools (5.x is known to work)")
        return pcrs
