"""The ppml key agent: wraps and unwraps PME keys for a JVM, over the pipes the JVM started it with.

Spark's own Parquet reader and writer ask a parquet-java ``KmsClient`` for keys; ppml's
(``io.ppml.parquet.PpmlKmsClient``, built by :mod:`ppml.parquet.jvm`) starts ``python -m ppml.parquet.agent``
as its child and sends it requests on standard input; answers go to standard output. Nothing else may
write there, so this module points ``sys.stdout`` at standard error for the rest of the process.

Protocol: frames are a 4-byte big-endian length and that many bytes; a frame holds fields, each a 4-byte
big-endian length and its bytes. The first request is ``[hello, 1, name, value, ...]``: the caller's
``KeySettings`` options (no secret: secrets are named by source). Then ``[wrap, master key, key]`` and
``[unwrap, master key, wrapped key]``. Answers are ``[ok, value]`` or ``[error, code, message]``; a message
names the master key and why (never key material). The agent ends when its input closes.

Caller authentication: the agent talks only over the anonymous pipes its parent created, so only that
process can reach it; it opens no socket and no file for others to connect to, and can do nothing its
parent could not do by running ppml with the same settings.
"""

from __future__ import annotations

import struct
import sys
from typing import BinaryIO

__all__ = ["serve", "read_frame", "write_frame", "PROTOCOL"]

PROTOCOL = b"1"
_MAX_FRAME = 16 * 1024 * 1024


def read_frame(stream: BinaryIO) -> list[bytes] | None:
    """The fields of the next frame, or ``None`` when the stream ends between frames."""
    head = stream.read(4)
    if not head:
        return None
    if len(head) != 4:
        raise EOFError("the stream ended inside a frame")
    (length,) = struct.unpack(">I", head)
    if length > _MAX_FRAME:
        raise ValueError(f"a frame of {length} bytes is too large")
    frame = stream.read(length)
    if len(frame) != length:
        raise EOFError("the stream ended inside a frame")
    fields, at = [], 0
    while at < length:
        if at + 4 > length:
            raise ValueError("a field is truncated")
        (size,) = struct.unpack(">I", frame[at:at + 4])
        at += 4
        if at + size > length:
            raise ValueError("a field runs past its frame")
        fields.append(frame[at:at + size])
        at += size
    return fields


def write_frame(stream: BinaryIO, fields: list[bytes]) -> None:
    body = b"".join(struct.pack(">I", len(f)) + f for f in fields)
    stream.write(struct.pack(">I", len(body)) + body)
    stream.flush()


def _answer(keys, fields: list[bytes]) -> list[bytes]:
    from ppml.parquet import masterkeys

    op, arguments = fields[0], fields[1:]
    if op == b"wrap" and len(arguments) == 2:
        return [b"ok", masterkeys.wrap(keys, arguments[1], arguments[0].decode()).encode()]
    if op == b"unwrap" and len(arguments) == 2:
        return [b"ok", masterkeys.unwrap(keys.keyring(), arguments[1].decode(), arguments[0].decode())]
    return [b"error", b"usage", b"unknown request " + op[:20]]


def _settings(fields: list[bytes]):
    from ppml.keys.settings import KeySettings

    if len(fields) < 2 or fields[0] != b"hello" or fields[1] != PROTOCOL or len(fields) % 2:
        raise ValueError("the first request must be hello, protocol 1, then setting names and values")
    pairs = fields[2:]
    return KeySettings.from_options({pairs[i].decode(): pairs[i + 1].decode() for i in range(0, len(pairs), 2)})


def serve(requests: BinaryIO, answers: BinaryIO) -> int:
    """Answer requests until ``requests`` ends; returns the exit status."""
    from ppml.errors import PpmlError

    first = read_frame(requests)
    if first is None:
        return 0
    try:
        keys = _settings(first)
    except (ValueError, PpmlError) as exc:
        write_frame(answers, [b"error", b"usage", str(getattr(exc, "message", exc)).encode()])
        return 2
    write_frame(answers, [b"ok", b""])
    while (fields := read_frame(requests)) is not None:
        try:
            reply = _answer(keys, fields) if fields else [b"error", b"usage", b"empty request"]
        except PpmlError as exc:
            text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
            reply = [b"error", exc.code.encode(), text.encode()]
        except Exception as exc:  # the JVM must get an answer, not a hung pipe; say what failed, not the data
            reply = [b"error", b"error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                     .encode()]
        write_frame(answers, reply)
    return 0


def main() -> int:
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    return serve(requests, answers)


if __name__ == "__main__":
    sys.exit(main())
