"""Attesters: what a workload uses to produce evidence about itself for a key-release request.

An attester takes the 32-byte binding digest (see :func:`~ppml.attest.evidence.binding_digest`) and
returns :class:`~ppml.attest.evidence.Evidence` whose report data carries it. Attesters are registered
by name like verifiers and built from keyword settings, so executor processes can build their own from
settings that hold no secret.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ppml.attest.evidence import Evidence
from ppml.errors import ConfigError, UsageError

__all__ = ["Attester", "open_attester", "available_attesters"]


class Attester(ABC):
    """Produces evidence bound to a request.

    Subclasses set :attr:`name` and implement :meth:`attest`.
    """

    name: ClassVar[str]

    @abstractmethod
    def attest(self, binding: bytes) -> Evidence:
        """Evidence whose report data carries ``binding`` (32 bytes).

        Raises :class:`~ppml.errors.AttestationError` naming the device or setting at fault.
        """


_KNOWN: dict[str, str] = {
    "simulated": "ppml.attest.simulated:SimulatedAttester",
    "tpm": "ppml.attest.tpm_attester:TpmAttester",
    "sgx-gramine": "ppml.attest.tee_attesters:GramineSgxAttester",
    "tdx": "ppml.attest.tee_attesters:TdxAttester",
    "command": "ppml.attest.tee_attesters:CommandAttester",
}


def open_attester(name: str, **settings: Any) -> Attester:
    """The attester registered as ``name`` configured with ``settings``."""
    if name not in _KNOWN:
        raise UsageError(f"unknown attester {name!r}", hint="choose one of: " + ", ".join(available_attesters()))
    module, _, cls_name = _KNOWN[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except ImportError as exc:
        raise ConfigError(f"the {name!r} attester needs packages that are not installed ({exc.name})",
                          hint="pip install 'ppml[attest]'") from None
    return cls(**settings)


def available_attesters() -> list[str]:
    return sorted(_KNOWN)
