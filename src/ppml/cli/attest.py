"""``ppml attest``: check attestation evidence the way the key broker does."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ppml.attest.evidence import MAX_EVIDENCE_SIZE, Evidence, available_verifiers, open_verifier
from ppml.cli._common import emit_json, err
from ppml.errors import AttestationError, NotFoundError, UsageError

app = typer.Typer(help="Verify attestation evidence (SGX/TDX quotes, MAA tokens, TPM quotes).",
                  no_args_is_help=True, rich_markup_mode="markdown")

# Which options belong to which evidence type, so a misplaced option is an error instead of being ignored.
_OPTION_TYPES = {"--collateral": ("sgx", "tdx"), "--jwks": ("maa",), "--issuer": ("maa",),
                 "--min-rsa-bits": ("maa",), "--ca": ("tpm",)}


@app.callback()
def _attest() -> None:
    """Verify attestation evidence (SGX/TDX quotes, MAA tokens, TPM quotes)."""


def parse_time(text: str | None) -> datetime:
    """``--at``: an ISO 8601 time (a time without a zone is UTC), or now."""
    if text is None:
        return datetime.now(timezone.utc)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--at {text!r} is not an ISO 8601 time", hint="e.g. --at 2025-07-15T00:00:00Z") from None
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at


def read_evidence(path: Path, evidence_type: str | None) -> Evidence:
    """The evidence in ``path``: a JSON evidence document, or a raw quote (sgx, tdx) or JWT (maa).

    ``evidence_type`` may be ``None`` for a JSON document, which names its own type.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_EVIDENCE_SIZE + 1)
    except FileNotFoundError:
        raise NotFoundError(f"evidence file {path} does not exist") from None
    if len(data) > MAX_EVIDENCE_SIZE:
        raise AttestationError(f"evidence file {path} is larger than {MAX_EVIDENCE_SIZE} bytes: is it evidence?")
    if data.lstrip()[:1] == b"{":
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise AttestationError(f"evidence file {path} is not valid JSON ({exc})") from None
        evidence = Evidence.from_json(document)
        if evidence_type is not None and evidence.type != evidence_type:
            raise UsageError(f"{path} holds {evidence.type!r} evidence, not --type {evidence_type}",
                             hint=f"use --type {evidence.type}")
        return evidence
    if evidence_type in ("sgx", "tdx"):
        # A quote starts with its little-endian version (3, 4 or 5), never with "{".
        return Evidence(evidence_type, {"quote": base64.b64encode(data).decode()})
    if evidence_type == "maa":
        try:
            return Evidence("maa", {"token": data.decode("ascii").strip()})
        except UnicodeDecodeError:
            raise AttestationError(f"evidence file {path} is neither a JWT nor JSON evidence") from None
    if evidence_type is None:
        raise UsageError(f"{path} is not a JSON evidence document: say what it is with --type sgx, tdx or maa")
    raise AttestationError(f"evidence file {path} is not a JSON evidence document ({{\"type\": "
                           f"\"{evidence_type}\", ...}}), which --type {evidence_type} needs")


def verifier_settings(evidence_type: str, *, collateral: Path | None = None, jwks: Path | None = None,
                      issuer: list[str] | None = None, min_rsa_bits: int | None = None,
                      ca: list[Path] | None = None) -> dict[str, Any]:
    """Verifier settings from the command-line options, refusing options that do not fit the type."""
    given = {"--collateral": collateral, "--jwks": jwks, "--issuer": issuer, "--min-rsa-bits": min_rsa_bits,
             "--ca": ca}
    for option, value in given.items():
        if value is not None and value != [] and evidence_type not in _OPTION_TYPES[option]:
            raise UsageError(f"{option} is for --type {' or '.join(_OPTION_TYPES[option])}, not --type {evidence_type}")
    settings: dict[str, Any] = {}
    if evidence_type in ("sgx", "tdx") and collateral is not None:
        settings["collateral"] = collateral
    elif evidence_type == "maa":
        if jwks is None or not issuer:
            raise UsageError("--type maa needs --jwks FILE and at least one --issuer URL",
                             hint="download the JWKS from https://<provider>/certs; the issuer is https://<provider>")
        settings.update(jwks=jwks, issuers=issuer)
        if min_rsa_bits is not None:
            settings["min_rsa_bits"] = min_rsa_bits
    elif evidence_type == "tpm":
        if not ca:
            raise UsageError("--type tpm needs --ca FILE: the CA that issued the attestation key's certificate")
        settings["ca_certificates"] = list(ca)
    return settings


@app.command("verify")
def verify(
    evidence_file: Annotated[Path, typer.Argument(
        metavar="EVIDENCE", help="Evidence: a JSON evidence document; for sgx/tdx also a raw quote file, "
                                 "for maa also a file holding the JWT.")],
    evidence_type: Annotated[str, typer.Option(
        "--type", metavar="TYPE", help="Evidence type: " + ", ".join(available_verifiers()) + ".")],
    collateral: Annotated[Optional[Path], typer.Option(
        help="sgx/tdx: collateral JSON (Intel PCS/PCCS, as dcap-qvl writes it), if the evidence has none.")] = None,
    jwks: Annotated[Optional[Path], typer.Option(
        help="maa: the attestation provider's signing keys (JWKS JSON from https://PROVIDER/certs).")] = None,
    issuer: Annotated[Optional[list[str]], typer.Option(
        "--issuer", metavar="URL", help="maa: an accepted token issuer (repeatable).")] = None,
    min_rsa_bits: Annotated[Optional[int], typer.Option(
        help="maa: smallest RSA signing key accepted [default: 2048].")] = None,
    ca: Annotated[Optional[list[Path]], typer.Option(
        "--ca", metavar="FILE", help="tpm: a CA certificate (PEM) trusted to issue attestation keys (repeatable).")
    ] = None,
    at: Annotated[Optional[str], typer.Option(
        "--at", metavar="TIME", help="Verify as of this ISO 8601 time, e.g. 2025-07-15T00:00:00Z [default: now].")
    ] = None,
) -> None:
    """Verify attestation evidence and print the claims it proves as JSON.

    Checks signatures, certificate chains and freshness as of --at (default now); judges no policy, so
    e.g. an out-of-date TCB status is printed, not refused. Exit code 0 when the evidence verifies, 1 when
    it does not.

    **Examples**

    * `ppml attest verify quote.dat --type tdx --collateral collateral.json`
    * `ppml attest verify token.jwt --type maa --jwks certs.json --issuer https://shareduks.uks.attest.azure.net`
    * `ppml attest verify evidence.json --type sgx --at 2025-07-15T00:00:00Z`
    """
    settings = verifier_settings(evidence_type, collateral=collateral, jwks=jwks, issuer=issuer,
                                 min_rsa_bits=min_rsa_bits, ca=ca)
    when = parse_time(at)
    verifier = open_verifier(evidence_type, **settings)
    evidence = read_evidence(evidence_file, evidence_type)
    verified = verifier.verify(evidence, at=when)
    verified_at = when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    err.print(f"Verified {verified.identity} as of {verified_at}.", markup=False)
    emit_json("attest.verify", {**verified.to_json(), "verified_at": verified_at})
