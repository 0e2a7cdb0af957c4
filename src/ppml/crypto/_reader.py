"""What every seekable decrypting reader shares (private)."""

from __future__ import annotations

import io

__all__ = ["SeekablePlaintext"]


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
