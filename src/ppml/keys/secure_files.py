"""Files that hold (wrapped) key material: created 0600, replaced atomically, refused when others can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ppml.errors import AlreadyExistsError, ConfigError

__all__ = ["write_private", "check_private"]


def write_private(path: str | os.PathLike, data: bytes, *, replace: bool = False) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically.

    The file is written under a temporary name in the same folder and then moved into place, so readers
    never see half a file. Unless ``replace``, an existing ``path`` raises
    :class:`~ppml.errors.AlreadyExistsError` (checked atomically with a hard link).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise AlreadyExistsError(f"{path} already exists",
                                         hint="choose another path, or pass --force to replace it") from None
    finally:
        tmp.unlink(missing_ok=True)


def check_private(path: str | os.PathLike, *, what: str) -> None:
    """Refuse a key file that users other than its owner can read or write."""
    if os.name != "posix":
        return
    mode = os.stat(path).st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"the {what} {path} is accessible to other users (mode {stat.S_IMODE(mode):o})",
            hint=f"restrict it with: chmod 600 {path}",
        )
