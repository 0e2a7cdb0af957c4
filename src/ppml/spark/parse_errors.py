"""Parse errors that say where, never what: the file, the row and column numbers, and the kind of problem.

Arrow's messages quote the offending value or the whole row (``invalid value 'secret-salary-9999'``,
``Expected 3 columns, got 2: 2,alice``); they would reach Spark's logs and UI. The value is used here only to
find the row it is in, and the message that leaves names the row and column, never their content.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ppml.errors import ConfigError

__all__ = ["ParseFailure", "parse_error"]

_CONVERSION = re.compile(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to ([\w\[\]().,: ]+?): "
                         r"invalid value '(.*)'$", re.DOTALL)
_COLUMNS = re.compile(r"Expected (\d+) columns, got (\d+): (.*)$", re.DOTALL)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class ParseFailure(Exception):
    """Parsing failed after ``rows`` rows had been parsed; carries Arrow's message for :func:`parse_error`."""

    def __init__(self, message: str, rows: int) -> None:
        super().__init__("parse failure")  # the message may quote data: it is never this exception's text
        self.arrow_message = message
        self.rows = rows


def parse_error(failure: ParseFailure, *, name: str, start: int, lines: Iterable[bytes], sep: str,
                columns: list[str]) -> ConfigError:
    """The error to raise for ``failure`` in file ``name``; ``lines`` are the rows of the split again (from
    plaintext byte ``start``), scanned to find the row Arrow quoted."""
    message = failure.arrow_message
    where = name if start == 0 else f"{name} (the part from plaintext byte {start})"
    conversion, count = _CONVERSION.search(message), _COLUMNS.search(message)
    if conversion:
        column = int(conversion.group(1))
        row = _row(lines, failure.rows, lambda fields: len(fields) > column and fields[column] == conversion.group(3),
                   sep)
        label = columns[column] if column < len(columns) else f"#{column + 1}"
        return ConfigError(f"{where}: row {row}, column {column + 1} ({label}): the value is not a valid "
                           f"{conversion.group(2)}", hint="check the schema and the 'sep', 'header' and 'nullValue' "
                                                          "options")
    if count:
        text = count.group(3).rstrip("\r\n")
        row = _row(lines, failure.rows, lambda fields: sep.join(fields) == text, sep)
        return ConfigError(f"{where}: row {row} has {count.group(2)} columns where {count.group(1)} were expected",
                           hint="check the schema and the 'sep' and 'quote' options")
    kind = _QUOTED.sub("…", message.splitlines()[0] if message else "")[:200]
    return ConfigError(f"{where}: cannot parse the plaintext with the given schema ({kind})",
                       hint="check the schema, 'format', 'sep', 'header' and 'cryptoMode' options")


def _row(lines: Iterable[bytes], parsed: int, matches, sep: str) -> str:
    """The number (from 1) of the first row after the ``parsed`` good ones that ``matches``, or ``?``."""
    for number, line in enumerate(lines, 1):
        if number <= parsed:
            continue
        fields = line.decode("utf-8", "replace").rstrip("\r\n").split(sep)
        if matches(fields):
            return str(number)
    return "?"
