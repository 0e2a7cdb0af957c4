"""Setting up encrypted writes: a data-key file, the key settings that open it, a format and its options.

Every writer of encrypted files (``ppml encrypt``, ``ppml cp --encrypt``, ``ppml tpch encrypt``, the public
API) prepares its :class:`Encryption` here, so they check the same things in the same order: the format
encrypts, the data key is of the kind the format needs (a BigDL key for BigDL's format, a ppml key for
ppml's), and the writer options belong to the format.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import DEFAULT_FORMAT, get_format
from ppml.errors import UsageError
from ppml.keys.kms import data_key_kind
from ppml.keys.settings import KeySettings

__all__ = ["Encryption", "prepare_encryption"]


@dataclass(frozen=True)
class Encryption:
    """What encrypted writes need: the format's name, the data key (a handle), its wrapped copies and the
    writer options. :meth:`writer_arguments` gives them as keyword arguments of :mod:`ppml.io.files`."""

    mode: str
    key: DataKey = field(repr=False)
    envelope: tuple[WrappedKey, ...]
    options: Mapping[str, object] = field(default_factory=dict)

    def writer_arguments(self) -> dict[str, object]:
        return {"key": self.key, "envelope": self.envelope, "mode": self.mode, **self.options}


def prepare_encryption(data_key: str | os.PathLike, keys: KeySettings | None = None, *, mode: str | None = None,
                       segment: str | None = None, prompt: Callable[[], str] | None = None) -> Encryption:
    """Open the data-key file ``data_key`` through ``keys`` and check it fits ``mode``.

    Parameters
    ----------
    data_key
        A data-key file (from ``ppml keys data-key``); it holds only wrapped copies of the key.
    keys
        How to unwrap it (default: this process's environment and the default key store).
    mode
        The format to write (default ``aes_gcm_stream``); it must encrypt.
    segment
        A segment preset of the format (``AES256_GCM_HKDF_1MB``...), or ``None`` for its default.
    prompt
        Asks for the key store passphrase when no source gives it (the command line's terminal prompt).
    """
    fmt = get_format(mode or DEFAULT_FORMAT)
    if not fmt.encrypted:
        raise UsageError(f"{fmt.name!r} does not encrypt", hint="choose an encrypted mode")
    options = fmt.writer_options(segment=segment)
    keys = keys or KeySettings()
    record, key = keys.keyring(prompt=prompt).open_data_key_file(str(data_key))
    kind = data_key_kind(record.envelope)
    if kind != fmt.data_key_kind:
        raise UsageError(
            f"{data_key} holds a {kind} data key; mode {fmt.name} needs a {fmt.data_key_kind} one",
            hint="BigDL's format takes BigDL data keys ('ppml keys data-key --bigdl-kms ...'); ppml's formats take "
                 "data keys from 'ppml keys data-key'",
        )
    return Encryption(fmt.name, key, record.envelope, options)
