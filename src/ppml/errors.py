"""Errors raised by ppml.

Every error carries a stable string ``code`` (used in ``--json`` output), a process ``exit_code`` (used by
the command line) and an optional ``hint`` telling the user what to do. Messages name the file, segment,
key or setting at fault and never contain key material or plaintext.

Exit codes
----------
====  ======================  =====================================================================
code  class                   meaning
====  ======================  =====================================================================
1     PpmlError               any other failure
2     UsageError              wrong arguments or options
2     WrongModelError         a model file is not a ppml model, or holds another library's model
2     SchemaMismatchError     data does not have the columns (or types) a model was fitted on
3     NotFoundError           a file, key store, key or key version does not exist
4     IntegrityError          ciphertext or header fails authentication (tampered, truncated, ...)
4     CorruptHeaderError      a file's header cannot be parsed
5     KeyAccessError          a key cannot be obtained: wrong passphrase, no matching KMS, denied
5     WrongKeyError           a data key does not match the file it was offered for
6     AlreadyExistsError      the destination exists and ``--force`` was not given
7     ConfigError             a setting is invalid, or an optional extra is not installed
1     AttestationError        evidence does not verify, or a policy refuses it
====  ======================  =====================================================================
"""

from __future__ import annotations

__all__ = [
    "PpmlError",
    "UsageError",
    "WrongModelError",
    "SchemaMismatchError",
    "NotFoundError",
    "IntegrityError",
    "CorruptHeaderError",
    "KeyAccessError",
    "WrongKeyError",
    "AlreadyExistsError",
    "ConfigError",
    "AttestationError",
    "EXIT_CODES",
    "exit_code_of",
    "PpmlInsecureWarning",
    "UnprotectedDataWarning",
]


class PpmlError(Exception):
    """Base class of every error ppml raises on purpose.

    Parameters
    ----------
    message
        What went wrong, naming the file, segment, key or setting at fault.
    hint
        What the user can do about it, or ``None``.
    """

    code = "error"
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class UsageError(PpmlError):
    code = "usage"
    exit_code = 2


class WrongModelError(UsageError):
    """A file is authentic but is not a ppml model file, or holds a model of another library or kind."""

    code = "wrong-model"


class SchemaMismatchError(UsageError):
    """Data to score does not match the feature columns (names or types) recorded with the model."""

    code = "schema-mismatch"


class NotFoundError(PpmlError):
    code = "not-found"
    exit_code = 3


class IntegrityError(PpmlError):
    """Authentication of a file failed.

    Deliberately says only *where* (file and segment), never which check failed, in the spirit of
    ``Fernet``'s single ``InvalidToken``.
    """

    code = "integrity"
    exit_code = 4

    def __init__(self, message: str, *, path: str | None = None, segment: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.segment = segment

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "path": self.path, "segment": self.segment}


class CorruptHeaderError(IntegrityError):
    code = "corrupt-header"


class KeyAccessError(PpmlError):
    code = "key-access"
    exit_code = 5


class WrongKeyError(KeyAccessError):
    code = "wrong-key"


class AlreadyExistsError(PpmlError):
    code = "exists"
    exit_code = 6


class ConfigError(PpmlError):
    code = "config"
    exit_code = 7


class AttestationError(PpmlError):
    """Evidence did not verify, or does not satisfy a policy. Exit code 1, as for ``ppml attest verify``."""

    code = "attestation"
    exit_code = 1


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "other failure, or evidence refused (attestation)",
    2: "usage error",
    3: "not found",
    4: "integrity failure (tampered, truncated or corrupt data)",
    5: "key access failure (wrong passphrase, wrong or unavailable key)",
    6: "destination exists (use --force)",
    7: "configuration error or missing optional extra",
}


def exit_code_of(code: str) -> int:
    """The exit code of the error class whose stable ``code`` is given (1 for a code no class has)."""
    pending: list[type[PpmlError]] = [PpmlError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls.exit_code
        pending.extend(cls.__subclasses__())
    return PpmlError.exit_code


class PpmlInsecureWarning(UserWarning):
    """A setting that gives up security is in use (insecure compatibility modes, simulated attestation).

    Emitted every time such a setting is used; the command line shows these warnings.
    """


class UnprotectedDataWarning(UserWarning):
    """Data is read without a protection ppml could give it: a folder of encrypted files without a data-set
    manifest (files deleted, added or replaced cannot be detected), or a BigDL file (its header is not
    authenticated). The command line shows these warnings."""
