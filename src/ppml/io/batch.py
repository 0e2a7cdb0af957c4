"""What operations over many files share: their report, parallel runs, and streaming copies with progress."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

__all__ = ["Report", "Progress", "copy_stream", "run_tasks", "default_workers"]

Progress = Callable[[int], None]
_CHUNK = 1 << 20


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class Report:
    """What an operation did: files, plaintext bytes, seconds, and per-file details."""

    operation: str
    mode: str
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    details: list[dict[str, object]] = field(default_factory=list)
    #: The data set written or checked: id, version and manifest digest (``None`` for single files).
    dataset: dict[str, object] | None = None

    def finish(self, started: float, *, status: str | None = None) -> Report:
        """Fill in the totals from :attr:`details` and the time since ``started`` (``perf_counter``).

        With ``status``, only details whose ``"status"`` is that value count as files.
        """
        counted = self.details if status is None else [d for d in self.details if d.get("status") == status]
        self.files = len(counted)
        self.bytes = sum(int(d.get("bytes", 0)) for d in counted)
        self.seconds = time.perf_counter() - started
        return self

    @property
    def failures(self) -> list[dict[str, object]]:
        """The details of the files that failed."""
        return [d for d in self.details if d.get("ok") is False or d.get("status") == "failed"]

    def to_json(self) -> dict[str, object]:
        return {"operation": self.operation, "mode": self.mode, "files": self.files, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), "dataset": self.dataset, "details": self.details}


def copy_stream(reader: BinaryIO, writer: BinaryIO, progress: Progress | None = None) -> int:
    """Copy everything ``reader`` yields into ``writer`` in 1 MiB pieces; returns the number of bytes."""
    total = 0
    while chunk := reader.read(_CHUNK):
        writer.write(chunk)
        total += len(chunk)
        if progress:
            progress(len(chunk))
    return total


def run_tasks(tasks: Sequence[Callable[[], dict[str, object]]], workers: int | None = None) -> list[dict[str, object]]:
    """Run ``tasks`` on up to ``workers`` threads (default :func:`default_workers`); results in task order."""
    if len(tasks) <= 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return list(pool.map(lambda task: task(), tasks))
