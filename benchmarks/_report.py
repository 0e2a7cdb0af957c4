"""What every benchmark prints: results on stdout, progress on stderr, and facts about the machine."""

from __future__ import annotations

import platform
import sys
from pathlib import Path


def say(text: str = "") -> None:
    print(text, flush=True)


def note(text: str) -> None:
    print(f"> {text}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
