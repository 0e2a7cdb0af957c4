"""``ppml attest``: check attestation evidence the way the key broker does."""

from __future__ import annotations

import base64
import json
from datetime import timezone
from pathlib import Path
from typing import Annotated

import typer

from ppml.attest.evidence import MAX_EVIDENCE_SIZE, Evidence, available_verifiers, open_verifier, verifier_class
from ppml.cli._common import emit_json, err
from ppml.cli.options import VerifierChoice, verifier_options
from ppml.errors import AttestationError, NotFoundError, UsageError

app = typer.Typer(help="Verify attestation evidence (SGX/TDX quotes, MAA tokens, TPM quotes).",
                  no_args_is_help=True, rich_markup_mode="markdown")


@app.callback()
def _attest() -> None:
    """Verify attestation evidence (SGX/TDX quotes, MAA tokens, TPM quotes)."""


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
        except RecursionError:
            raise AttestationError(f"evidence file {path} is not valid JSON (nested too deeply)") from None
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


@app.command("verify")
@verifier_options
def verify(
    evidence_file: Annotated[Path, typer.Argument(
        metavar="EVIDENCE", help="Evidence: a JSON evidence document; for sgx/tdx also a raw quote file, "
                                 "for maa also a file holding the JWT.")],
    verification: VerifierChoice,
    evidence_type: Annotated[str, typer.Option(
        "--type", metavar="TYPE", help="Evidence type: " + ", ".join(available_verifiers()) + ".")],
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
    evidence_type = verifier_class(evidence_type).type  # --type SGX: the registered spelling, as evidence has it
    settings = verification.settings(evidence_type)
    when = verification.time()
    verifier = open_verifier(evidence_type, **settings)
    evidence = read_evidence(evidence_file, evidence_type)
    verified = verifier.verify(evidence, at=when)
    verified_at = when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    err.print(f"Verified {verified.identity} as of {verified_at}.", markup=False)
    emit_json("attest.verify", {**verified.to_json(), "verified_at": verified_at})
