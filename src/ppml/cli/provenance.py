"""``ppml provenance``: show and verify the signed record of how a result was made."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ppml.cli._common import JsonOpt, emit_json, err
from ppml.cli.options import key_options, passphrase_prompt
from ppml.keys.settings import KeySettings

app = typer.Typer(help="Signed provenance of results: inputs, query, keys, attestation.", no_args_is_help=True,
                  rich_markup_mode="markdown")


@app.command()
def show(
    result: Annotated[str, typer.Argument(help="A result folder written by ppml (local path or URL).")],
    version: Annotated[Optional[int], typer.Option("--version", metavar="N", min=1,
                                                   help="The data-set version [default: the latest].")] = None,
) -> None:
    """Print a result's provenance record as JSON, as stored (nothing checked; no key needed).

    **Example**: `ppml provenance show out/Q01`
    """
    from ppml.io.datasets import latest_manifest_number
    from ppml.io.provenance import read_record
    from ppml.io.storage import locate

    root = locate(result)
    record, location = read_record(root, version or latest_manifest_number(root))
    err.print(f"{escape(location.url)}: not checked; 'ppml provenance verify' checks it", markup=True)
    emit_json("provenance.show", {"path": root.url, "record": record})


@app.command()
@key_options
def verify(
    result: Annotated[str, typer.Argument(help="A result folder written by ppml (local path or URL).")],
    keys: KeySettings,
    signer: Annotated[Optional[Path], typer.Option(
        "--signer", metavar="FILE",
        help="The signer's public key (PEM), or its signing-key file [default: the result's data key].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a result's provenance: the signature, the result's manifest, and each input (exit 4 if not).

    Inputs must still hold the data-set version (or the files) the result was computed from. A record
    signed with a signing key needs that key's public key (--signer); one signed with the result's data key
    is checked with that key.

    **Examples**

    * `ppml provenance verify out/Q01`
    * `ppml provenance verify abfss://data@acct.dfs.core.windows.net/reports/q1 --signer signer.pub.pem`
    """
    from ppml.io.provenance import verify_provenance
    from ppml.io.storage import locate

    ring = keys.keyring(prompt=passphrase_prompt())
    report = verify_provenance(locate(result), ring, trusted=_trusted(signer, ring))
    if as_json:
        emit_json("provenance.verify", {"ok": True, **report})
        return
    signed = report["signer"]
    err.print(f"{escape(result)}: data set {report['result']['dataset']} version {report['result']['version']}, "
              f"signed by {signed.get('kind')} {signed.get('key_id')}"
              f"{' (attested)' if signed.get('attested') else ''}; {len(report['inputs'])} input(s) as recorded.",
              markup=True)


def _trusted(signer: Path | None, ring) -> bytes | None:
    """The public key a ``--signer`` file gives: a PEM public key, or a signing-key file unwrapped by ``ring``."""
    if signer is None:
        return None
    from ppml.io.provenance import load_public_key, public_key_of

    data = signer.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return load_public_key(data, name=str(signer))
    return public_key_of(ring.open_data_key_file(str(signer))[1])
