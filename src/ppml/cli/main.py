"""The ``ppml`` command: one entry point that turns every error into a clear message and an exit code."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

import typer

from ppml import __version__, errors
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


_PPML_ERROR_LINE = re.compile(r"^ppml\.errors\.(\w+): ", re.MULTILINE)
# Where Spark's own text resumes after the Python worker's traceback it quotes.
_SPARK_TEXT = ("\n\tat ", "\n\nDriver stacktrace", "\n SQLSTATE:", " SQLSTATE:")


def spark_failure(exc: BaseException) -> PpmlError | None:
    """The error a failed Spark job stands for, or ``None`` when ``exc`` does not come from Spark.

    A ppml error raised inside a Spark task or planning step reaches the driver only as text: the Python
    worker's traceback, quoted inside Spark's exception and Java stack. That error is rebuilt (class, message,
    hint), so the user sees the same message and exit code as without Spark. Other Spark failures become a
    ppml error quoting Spark's first line.
    """
    if not type(exc).__module__.startswith(("pyspark", "py4j")):
        return None
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a Py4J error asks the JVM for its text, and the JVM may be gone
        text = type(exc).__name__
    found = list(_PPML_ERROR_LINE.finditer(text))
    if not found:
        lines = [line for line in text.strip().splitlines() if line.strip()] or [type(exc).__name__]
        # Py4J's first line only names the JVM call; the Java exception that says why comes next.
        first = lines[1].lstrip(": ") if lines[0].startswith("An error occurred while calling") and len(lines) > 1 \
            else lines[0]
        return PpmlError(f"the Spark job failed: {first[:500]}",
                         hint="the Spark messages above, and the executors' logs on the workers, say more")
    body = text[found[-1].end():]
    for resumes in _SPARK_TEXT:
        body = body.split(resumes, 1)[0]
    message, hint = body.strip(), None
    if message.endswith(")") and " (hint: " in message:
        message, _, hint = message[:-1].rpartition(" (hint: ")
    cls = getattr(errors, found[-1].group(1), None)
    cls = cls if isinstance(cls, type) and issubclass(cls, PpmlError) else PpmlError
    error = cls.__new__(cls)  # some classes take more arguments; the message and hint are what is shown
    PpmlError.__init__(error, message, hint=hint)
    return error


def _report(exc: PpmlError) -> int:
    err.print(f"[red]ppml: error:[/] {shown(exc.message)}", soft_wrap=True)
    if exc.hint:
        err.print(f"[cyan]ppml: hint:[/] {shown(exc.hint)}", soft_wrap=True)
    return exc.exit_code


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
        code = _report(exc)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        err.print(f"[red]ppml: error:[/]{shown(where)}: {shown(exc.strerror or exc)}", soft_wrap=True)
        code = 1
    except KeyboardInterrupt:
        err.print("ppml: interrupted; no partial output was kept")
        code = 130
    except Exception as exc:
        failure = spark_failure(exc)
        if failure is None:
            raise
        code = _report(failure)
    if __name__ == "__main__" or args is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
