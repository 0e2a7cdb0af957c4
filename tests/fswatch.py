"""Watches every file written on every persistent file system of the machine, with Linux fanotify.

fanotify reports each file closed after writing (``FAN_CLOSE_WRITE``) on the marked file systems, by any
process, with an open descriptor to the file itself: its content can be read even when the writer deleted
the file at once (Spark's shuffle and spill files, temporary files). Every persistent file system (all but
proc, sysfs, tmpfs, ramfs and the like) is marked whole, so nothing written to a disk escapes, wherever it
is. Needs ``CAP_SYS_ADMIN`` (root) and Linux 4.20+; :func:`available` says whether it works here.

Files closed by live processes outside this test's process tree are read only up to ``foreign_limit`` bytes:
the machine is shared, and another program's multi-GB outputs cannot hold this test's random needles. Files
of processes that have exited by the time their event is read are read whole, as this test's own are.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
from pathlib import Path

_FAN_CLOEXEC, _FAN_CLASS_NOTIF, _FAN_UNLIMITED_QUEUE = 0x1, 0x0, 0x10
_FAN_MARK_ADD, _FAN_MARK_FILESYSTEM = 0x1, 0x100
_FAN_CLOSE_WRITE, _FAN_Q_OVERFLOW = 0x8, 0x4000
_AT_FDCWD = -100
_EVENT = struct.Struct("IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
MEMORY_OR_VIRTUAL = {"proc", "sysfs", "devtmpfs", "tmpfs", "ramfs", "devpts", "cgroup", "cgroup2", "mqueue",
                     "securityfs", "debugfs", "tracefs", "pstore", "bpf", "fusectl", "configfs", "hugetlbfs",
                     "autofs", "nsfs", "binfmt_misc", "rpc_pipefs", "efivarfs", "selinuxfs"}


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def persistent_mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of every persistent file system, one mount point per device."""
    seen, found = set(), []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        kind = fields[fields.index("-") + 1]
        device, mount_point = fields[2], fields[4].encode().decode("unicode_escape")
        if kind not in MEMORY_OR_VIRTUAL and device not in seen and not mount_point.startswith("/mnt/sandboxing"):
            seen.add(device)
            found.append((mount_point, kind))
    return found


def available() -> str | None:
    """``None`` when fanotify file-system marks work here, else why not."""
    libc = _libc()
    fd = libc.fanotify_init(_FAN_CLASS_NOTIF | _FAN_CLOEXEC, os.O_RDONLY)
    if fd < 0:
        return f"fanotify_init failed: {os.strerror(ctypes.get_errno())} (needs root)"
    try:
        if libc.fanotify_mark(fd, _FAN_MARK_ADD | _FAN_MARK_FILESYSTEM, _FAN_CLOSE_WRITE, _AT_FDCWD, b"/") != 0:
            return f"fanotify_mark failed: {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(fd)
    return None


def _descends_from(pid: int, ancestor: int) -> bool | None:
    """Whether ``pid`` is ``ancestor`` or below it; ``None`` when the process is gone."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


class PersistentWrites(threading.Thread):
    """Collects, while running, every file written to disk that contains one of ``needles``.

    Attributes after :meth:`stop`: ``hits`` (path -> needles found), ``written`` (paths of this process
    tree's files), ``overflowed`` (events were lost: the result proves nothing).
    """

    def __init__(self, needles: list[bytes], *, foreign_limit: int = 1 << 20) -> None:
        super().__init__(daemon=True)
        self.needles, self.foreign_limit = needles, foreign_limit
        self.hits: dict[str, list[bytes]] = {}
        self.written: set[str] = set()
        self.overflowed = False
        self._stop_event = threading.Event()
        self._root = os.getpid()
        libc = _libc()
        # An unlimited queue: on a busy machine the kernel would otherwise drop events past 16384.
        self._fd = libc.fanotify_init(_FAN_CLASS_NOTIF | _FAN_CLOEXEC | _FAN_UNLIMITED_QUEUE,
                                      os.O_RDONLY | os.O_LARGEFILE)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "fanotify_init")
        for mount_point, _ in persistent_mounts():
            if libc.fanotify_mark(self._fd, _FAN_MARK_ADD | _FAN_MARK_FILESYSTEM, _FAN_CLOSE_WRITE, _AT_FDCWD,
                                  mount_point.encode()) != 0:
                raise OSError(ctypes.get_errno(), f"fanotify_mark {mount_point}")

    def _scan(self, fd: int, pid: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
        ours = _descends_from(pid, self._root)
        limit = self.foreign_limit if ours is False else None
        if ours:
            self.written.add(path)
        longest = max(len(n) for n in self.needles)
        found, tail, offset = set(), b"", 0
        while limit is None or offset < limit:
            chunk = os.pread(fd, 1 << 20, offset)
            if not chunk:
                break
            window = tail + chunk
            found.update(n for n in self.needles if n in window)
            tail, offset = window[-longest:], offset + len(chunk)
        if found:
            self.hits.setdefault(path, []).extend(sorted(found))

    def run(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if not ready:
                if self._stop_event.is_set():
                    return
                continue
            data = os.read(self._fd, 1 << 16)
            offset = 0
            while offset + _EVENT.size <= len(data):
                length, _, _, _, mask, fd, pid = _EVENT.unpack_from(data, offset)
                offset += length
                if mask & _FAN_Q_OVERFLOW:
                    self.overflowed = True
                if fd >= 0:
                    try:
                        self._scan(fd, pid)
                    except OSError:
                        pass  # not a regular file (a pipe, a device): nothing stored on disk to read
                    finally:
                        os.close(fd)

    def stop(self) -> None:
        """Drain the events still queued, then stop."""
        self._stop_event.set()
        self.join()
        os.close(self._fd)
