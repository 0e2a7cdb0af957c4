"""What every command shares: the consoles, JSON output, simple options, progress, exit codes, the demos' keys.

Option groups (key settings, attestation verifiers) are in :mod:`ppml.cli.options`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from ppml.errors import exit_code_of
from ppml.keys.settings import KeySettings

# Human text and progress go to stderr; stdout carries only data (JSON, decrypted bytes). Messages are not
# wrapped at the (default 80-column) width, so paths and key references stay whole for copying and grep.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

JSON_SCHEMA = "ppml.cli/1"

# C0 and C1 controls (escape sequences, line breaks) and the Unicode marks that reorder or hide text.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing destination.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, max=64, help="Files processed in parallel.")]


def shown(value: object) -> str:
    """``value`` as text safe to print in a rich message: markup and unprintable characters escaped.

    Names, paths and messages can come from files anyone may have written (a key envelope is not
    authenticated): unescaped, ``[/]`` would abort the command, and escape sequences or line breaks could
    fake or hide lines of output.
    """
    text = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))
    return escape(text)


def emit_json(kind: str, payload: dict[str, object]) -> None:
    doc: dict[str, object] = {"schema": JSON_SCHEMA, "kind": kind}
    # The CLI schema and kind win over same-named payload fields (a data-key file's own "schema").
    doc.update((name, value) for name, value in payload.items() if name not in doc)
    out.print_json(json.dumps(doc), indent=2)


def exit_for_failures(details: list[dict[str, object]]) -> None:
    """Exit with the code of the first failed entry's error class, if any entry failed."""
    failed = [d for d in details if d.get("status") == "failed" or d.get("ok") is False]
    if failed:
        raise typer.Exit(exit_code_of(str(failed[0]["error"]["code"])))  # type: ignore[index]


@contextlib.contextmanager
def byte_progress(description: str, total: int | None) -> Iterator:
    """A progress bar on stderr (hidden when stderr is not a terminal; ``total=None`` for a stream of
    unknown size); yields an ``advance(n)`` callable."""
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def demo_keys(directory: Path, key_name: str, key_file: Path, say) -> tuple[KeySettings, object, object]:
    """The demos' key store, primary key and data key in ``directory``, created once and then reused.

    Without ``$PPML_KEYSTORE_PASSWORD`` the demo keeps its own random passphrase in ``keystore.pass``
    (mode 0600). ``say(text, **facts)`` reports each step. Returns the key settings (which Spark executors
    can use too), the data-key file and the key.
    """
    import secrets

    from ppml.keys import secure_files
    from ppml.keys.datakey_file import DataKeyFile
    from ppml.keys.local import PASSWORD_ENV

    passphrase = None
    if not os.environ.get(PASSWORD_ENV):
        pass_file = directory / "keystore.pass"
        if not pass_file.exists():
            secure_files.write_private(pass_file, secrets.token_urlsafe(24).encode())
        passphrase = f"file:{pass_file}"
        say(f"No {PASSWORD_ENV} set: using the demo's own random passphrase in {pass_file} (mode 0600). "
            "Real deployments set their own passphrase.")
    keys = KeySettings(keystore=str(directory / "keystore.json"), passphrase=passphrase)
    kms = keys.primary()
    if kms.exists:
        say(f"Reusing the key store {kms.path}.")
    else:
        kms.create_store()
        say(f"Created a key store {kms.path}: primary keys encrypted under an Argon2id key from the passphrase.")
    if key_name not in {k.name for k in kms.list_keys()}:
        kms.create_key(key_name)
        say(f"Created primary key local:{key_name} (version 1). It never leaves the key store unencrypted.")
    if not key_file.exists():
        key, wrapped = kms.generate_data_key(key_name)
        DataKeyFile.new(key.key_id, (wrapped,)).save(key_file)
        say(f"Created a data key and saved only its wrapped form to {key_file.name} (mode 0600).",
            key_id=key.key_id, wrapped_by=wrapped.reference)
    record, key = keys.keyring().open_data_key_file(str(key_file))
    return keys, record, key
