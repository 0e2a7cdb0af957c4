"""``ppml parquet``: encrypted Parquet (Parquet Modular Encryption) with ppml's keys.

``ppml inspect``, ``verify``, ``decrypt``, ``rewrap`` and ``rekey`` handle encrypted Parquet like every format;
this group converts data into it and shows what protects each column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ppml.cli._common import ForceOpt, JsonOpt, WorkersOpt, byte_progress, emit_json, err, shown
from ppml.cli.options import key_options
from ppml.io.storage import locate
from ppml.keys.settings import KeySettings

app = typer.Typer(help="Encrypted Parquet (PME): a key per column, for Spark, pyarrow and DuckDB.",
                  no_args_is_help=True, rich_markup_mode="markdown")

_WRITE = "Encryption"
FooterKeyOpt = Annotated[str, typer.Option(
    "--footer-key", metavar="KEY", rich_help_panel=_WRITE,
    help="Master key (a primary key name) of the footer and of columns no --column-key names.")]
ColumnKeyOpt = Annotated[Optional[list[str]], typer.Option(
    "--column-key", metavar="KEY:COLS", rich_help_panel=_WRITE,
    help="Master key of columns: KEY:col[,col...] (repeatable).")]
AlgorithmOpt = Annotated[str, typer.Option(
    "--algorithm", metavar="NAME", rich_help_panel=_WRITE,
    help="AES_GCM_V1 (every page authenticated) or AES_GCM_CTR_V1 (pages not authenticated).")]
PlainFooterOpt = Annotated[bool, typer.Option(
    "--plaintext-footer", rich_help_panel=_WRITE, help="Leave the schema readable without keys (signed).")]
ExternalOpt = Annotated[bool, typer.Option(
    "--external-key-material", rich_help_panel=_WRITE,
    help="Key material beside each file: re-wrapping rewrites only that.")]


def encryption_settings(footer_key: str, column_key: list[str] | None, algorithm: str, plaintext_footer: bool,
                        external_key_material: bool):
    """The :class:`~ppml.parquet.settings.ParquetEncryption` of the encryption options."""
    from ppml.parquet.settings import ParquetEncryption, parse_column_keys

    return ParquetEncryption(footer_key=footer_key, column_keys=parse_column_keys(column_key or []),
                             algorithm=algorithm, plaintext_footer=plaintext_footer,
                             external_key_material=external_key_material)


@app.command("encrypt")
@key_options
def encrypt_cmd(
    src: Annotated[str, typer.Argument(help="CSV, JSON-lines or Parquet file or folder.")],
    dst: Annotated[str, typer.Argument(help="Encrypted Parquet file or folder to create.")],
    keys: KeySettings,
    footer_key: FooterKeyOpt = "default",
    column_key: ColumnKeyOpt = None,
    algorithm: AlgorithmOpt = "AES_GCM_V1",
    plaintext_footer: PlainFooterOpt = False,
    external_key_material: ExternalOpt = False,
    input_format: Annotated[Optional[str], typer.Option(
        "--input-format", metavar="FMT", help="csv, json or parquet [default: from the name].")] = None,
    delimiter: Annotated[str, typer.Option("--delimiter", metavar="C", help="CSV delimiter.")] = ",",
    no_header: Annotated[bool, typer.Option("--no-header", help="CSV files have no header line.")] = False,
    data_key: Annotated[Optional[Path], typer.Option(
        "--data-key", metavar="FILE",
        help="Data-key file for a folder's manifest [default: a key under --footer-key].")] = None,
    force: ForceOpt = False,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert CSV, JSON lines or Parquet into encrypted Parquet, a master key per column.

    Every column is encrypted: with its --column-key, else with the footer key. A reader needs the
    footer key and the keys of the columns it reads. A folder becomes a data set (one file per input,
    with a manifest); the output appears only when complete.

    **Examples**

    * `ppml parquet encrypt orders.csv orders.parquet --footer-key tpch`
    * `ppml parquet encrypt raw/ enc/ --footer-key tpch --column-key pii:c_phone,c_address`
    * `ppml parquet encrypt t.parquet e.parquet --plaintext-footer --external-key-material`
    """
    from ppml.parquet import tools

    settings = encryption_settings(footer_key, column_key, algorithm, plaintext_footer, external_key_material)
    total = sum(size for _, size in locate(src).files())
    with byte_progress("encrypting", total) as advance:
        report = tools.encrypt(src, dst, keys=keys, encryption=settings, input_format=input_format,
                               delimiter=delimiter, header=not no_header, data_key=str(data_key) if data_key else None,
                               force=force, workers=workers, progress=advance)
    if as_json:
        emit_json("parquet.encrypt", report.to_json())
        return
    rows = sum(int(d.get("rows", 0)) for d in report.details)
    err.print(f"Encrypted {report.files} file(s), {rows:,} rows, into {shown(dst)} in {report.seconds:.2f} s.")


def show_columns(facts: dict[str, object]) -> None:
    """The human form of a Parquet file's column protection (``ppml inspect``)."""
    columns = facts.get("columns")
    if columns is None:
        reason = facts.get("footer_error") or "give key options that unwrap the footer key"
        err.print(f"  columns: in the encrypted footer ({shown(str(reason))})")
        return
    err.print("  columns:")
    width = max((len(c["column"]) for c in columns), default=0)  # type: ignore[index]
    for column in columns:  # type: ignore[union-attr]
        if column["protection"] == "column key":
            wrapped = ", ".join(column["wrapped_by"]) or "not wrapped by ppml"
            readable = {True: "", False: "  (this process has no key for it)", None: ""}[column["readable"]]
            text = f"column key {column['master_key']} ({wrapped}){readable}"
        else:
            text = column["protection"]
        err.print(f"    {shown(column['column']):<{width}}  {shown(text)}")
