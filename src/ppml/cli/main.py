"""The ``ppml`` command: one entry point that turns every error into a clear message and an exit code."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from ppml import __version__
from ppml.cli import attest, azure, broker, cp, data, deploy, keys, ml, parquet, provenance, submit, tpch
from ppml.cli._common import err, shown
from ppml.cli.demo import demo
from ppml.errors import EXIT_CODES, PpmlError

_EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())

app = typer.Typer(
    name="ppml",
    help="Encrypted data at rest, keys from a KMS, analytics that decrypt only inside the job.",
    epilog=_EPILOG,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(keys.app, name="keys")
app.add_typer(tpch.app, name="tpch")
app.add_typer(azure.app, name="azure")
app.add_typer(broker.app, name="broker")
app.add_typer(attest.app, name="attest")
app.add_typer(provenance.app, name="provenance")
app.add_typer(deploy.app, name="deploy")
app.add_typer(parquet.app, name="parquet")
app.add_typer(ml.app, name="ml")
data.register(app)
cp.register(app)
submit.register(app)
app.command()(demo)


def _version(value: bool) -> None:
    if value:
        print(f"ppml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """ppml: privacy-preserving analytics on encrypted data."""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"[yellow]ppml: warning:[/] {shown(message)}")


def main(args: list[str] | None = None) -> int:
    """Run the command line; returns (and exits with) the process exit code."""
    warnings.showwarning = _show_warning
    logging.basicConfig(level=os.environ.get("PPML_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="ppml: %(levelname)s: %(message)s")
    try:
        app(args, prog_name="ppml", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except PpmlError as exc:
        err.print(f"[red]ppml: error:[/] {shown(exc.message)}", soft_wrap=True)
        if exc.hint:
            err.print(f"[cyan]ppml: hint:[/] {shown(exc.hint)}", soft_wrap=True)
        code = exc.exit_code
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        err.print(f"[red]ppml: error:[/]{shown(where)}: {shown(exc.strerror or exc)}", soft_wrap=True)
        code = 1
    except KeyboardInterrupt:
        err.print("ppml: interrupted; no partial output was kept")
        code = 130
    if __name__ == "__main__" or args is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
