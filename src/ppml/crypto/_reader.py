"""What the decrypting readers and the encrypting writers share (private)."""

from __future__ import annotations

import io

__all__ = ["SeekablePlaintext", "SealingWriter"]


class SeekablePlaintext(io.BufferedIOBase):
    """A read-only binary file over plaintext of known ``size``; subclasses keep the position in ``_pos``.

    Seeking only moves the position (anywhere, even past the end); the next read decrypts what it needs.
    """

    size: int
    _pos: int

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        self._pos = target
        return target


class SealingWriter(io.BufferedIOBase):
    """A write-only binary file whose ``close()`` seals the file, unless a ``with`` block failed.

    Leaving a ``with`` block by an exception marks the writer aborted, so ``close()`` does not write the
    final segment, padding or MAC: a half-written file can never pass as complete. Subclasses implement
    :meth:`_seal` (write the ending) and :meth:`_release` (drop buffers and cipher state).
    """

    _aborted = False

    def writable(self) -> bool:
        return True

    def _seal(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if not self.closed:
            try:
                if not self._aborted:
                    self._seal()
            finally:
                self._release()
                super().close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._aborted = True
        self.close()
