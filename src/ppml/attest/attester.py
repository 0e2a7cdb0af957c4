"""Attesters: what a workload uses to produce evidence about itself for a key-release request.

An attester takes the 32-byte binding digest (see :func:`~ppml.attest.evidence.binding_digest`) and
returns :class:`~ppml.attest.evidence.Evidence` whose report data carries it. Attesters are registered
by name like verifiers and built from keyword settings, so executor processes can build their own from
settings that hold no secret.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ppml.attest.evidence import Evidence
from ppml.registry import Registry

__all__ = ["Attester", "register_attester", "open_attester", "available_attesters"]


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


_ATTESTERS: Registry[Attester] = Registry(
    "attester",
    known={
        "simulated": ("ppml.attest.simulated:SimulatedAttester", "attest"),
        "tpm": ("ppml.attest.tpm_attester:TpmAttester", "attest"),
        "sgx-gramine": ("ppml.attest.tee_attesters:GramineSgxAttester", "attest"),
        "tdx": ("ppml.attest.tee_attesters:TdxAttester", "attest"),
        "command": ("ppml.attest.tee_attesters:CommandAttester", "attest"),
    },
)


def register_attester(cls: type[Attester], *, replace: bool = False) -> None:
    """Register an attester class under ``cls.name``; refuses to replace one silently."""
    _ATTESTERS.register(cls, replace=replace)


def open_attester(name: str, **settings: Any) -> Attester:
    """The attester registered as ``name`` (case-insensitive) configured with ``settings``."""
    return _ATTESTERS.get(name)(**settings)


def available_attesters() -> list[str]:
    return _ATTESTERS.names()
