"""The Spark master URLs ppml submits to, parsed once so that every later step knows the kind."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ppml.errors import UsageError

__all__ = ["Master", "parse_master"]

_LOCAL = re.compile(r"^local(\[(\*|[1-9]\d*)(,[1-9]\d*)?\])?$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")
_SUPPORTED = "local, local[N], local[*], spark://HOST:PORT or k8s://https://HOST[:PORT]"


@dataclass(frozen=True)
class Master:
    """A Spark master: ``kind`` is ``local``, ``standalone`` or ``k8s``; ``url`` is what spark-submit gets."""

    kind: str
    url: str


def parse_master(url: str) -> Master:
    """Parse ``url``; anything but the supported kinds is a :class:`~ppml.errors.UsageError` naming it."""
    text = url.strip()
    if _LOCAL.match(text):
        return Master("local", text)
    if text.startswith("spark://"):
        hosts = text[len("spark://"):].split(",")
        if hosts and all(_HOST_PORT.match(h) for h in hosts):
            return Master("standalone", text)
        raise UsageError(f"--master {url!r}: a standalone master is spark://HOST:PORT (several: spark://H1:P1,H2:P2)")
    if text.startswith("k8s://"):
        server = text[len("k8s://"):]
        if "://" not in server:
            server = "https://" + server  # Spark's own default for a k8s:// URL without a scheme
        parts = urlsplit(server)
        if parts.scheme != "https":
            raise UsageError(f"--master {url!r}: the Kubernetes API server must be reached over https",
                             hint="credentials and the job's settings travel to it; use k8s://https://HOST:PORT")
        if not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise UsageError(f"--master {url!r} is not k8s://https://HOST[:PORT]")
        return Master("k8s", "k8s://" + server.rstrip("/"))
    raise UsageError(f"--master {url!r} is not a master ppml submits to", hint=f"use {_SUPPORTED}")
