"""A private folder on a memory file system, for libraries that can only write models to a path.

Spark ML's writers and readers work on paths. ppml lets them work on a folder of a ``tmpfs`` (or ``ramfs``),
whose files live in memory (the page cache) and are never written to a disk: ``/dev/shm`` on Linux, or
``$XDG_RUNTIME_DIR``, or the folder named by ``$PPML_ML_STAGING``. The folder is created with mode 0700, used
for one save or load, and removed at once. Anything else -- a folder on a disk file system, a system without
``/proc/self/mountinfo`` -- is refused.

What this relies on: tmpfs pages can be moved to swap under memory pressure, like every page of the process
that holds the model anyway; a machine that must keep models off disk needs no swap or encrypted swap for
the process memory too. Other users cannot open the folder (0700); root can, as root can read the process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ppml.errors import ConfigError

__all__ = ["memory_folder", "file_system_of", "STAGING_ENV", "MEMORY_FILE_SYSTEMS"]

STAGING_ENV = "PPML_ML_STAGING"
MEMORY_FILE_SYSTEMS = ("tmpfs", "ramfs")
_MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...)
    return field.encode().decode("unicode_escape") if "\\" in field else field


def file_system_of(path: str | os.PathLike) -> str | None:
    """The type of the file system holding ``path`` (``tmpfs``, ``ext4``...), or ``None`` when unknown."""
    try:
        with open(_MOUNTINFO, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in lines:
        fields = line.split()
        separator = fields.index("-")
        mount_point = _unescape(fields[4])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        # A later mount on the same point hides the earlier one, so ties go to the later line.
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, fields[separator + 1]
    return kind


def _candidates() -> list[str]:
    chosen = os.environ.get(STAGING_ENV)
    if chosen:
        return [chosen]
    return [p for p in ("/dev/shm", os.environ.get("XDG_RUNTIME_DIR")) if p]


@contextlib.contextmanager
def memory_folder() -> Iterator[Path]:
    """A new private folder on a memory file system, removed with everything in it when the block ends."""
    refused = []
    for root in _candidates():
        kind = file_system_of(root) if os.path.isdir(root) else None
        if kind in MEMORY_FILE_SYSTEMS:
            folder = Path(tempfile.mkdtemp(prefix="ppml-ml-", dir=root))
            try:
                yield folder
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return
        refused.append(f"{root} ({kind or 'not a folder, or unknown file system'})")
    raise ConfigError(
        "no memory file system for Spark ML's model files: " + ", ".join(refused or ["none configured"]),
        hint=f"mount a tmpfs (mount -t tmpfs -o mode=1777 tmpfs /mnt/ppml; in Kubernetes an emptyDir with "
             f"medium: Memory) and set {STAGING_ENV} to it",
    )
