"""Thrift's compact protocol, as Parquet footers use it: decoded into generic structs and encoded back.

Parquet's metadata (``FileMetaData``, ``FileCryptoMetaData``, page headers) is Thrift compact-protocol
structs. ppml reads a few fields of them (the encryption algorithm, key metadata, column paths) and, to
re-wrap keys without rewriting data, replaces key metadata and encodes the footer again. A generic struct
keeps every field it does not understand, in order, so decoding then encoding gives the same bytes.

Every length and count is checked against the bytes left, and nesting is bounded, so a hostile footer
cannot make the decoder allocate or recurse without limit; it raises :class:`ThriftError` instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ThriftError", "Struct", "Field", "decode_struct", "encode_struct", "BINARY", "STRUCT", "LIST", "I32",
           "I64", "BOOL_TRUE"]

# Compact protocol type ids.
BOOL_TRUE, BOOL_FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)
_MAX_DEPTH = 32


class ThriftError(ValueError):
    """The bytes are not a valid compact-protocol struct."""


@dataclass
class Field:
    """One field of a struct: its id, compact type and value (a list value is ``(element type, items)``)."""

    id: int
    type: int
    value: Any


@dataclass
class Struct:
    """A decoded struct: its fields in wire order (unknown ones included)."""

    fields: list[Field] = field(default_factory=list)

    def get(self, field_id: int, default: Any = None) -> Any:
        for item in self.fields:
            if item.id == field_id:
                return item.value
        return default

    def set(self, field_id: int, field_type: int, value: Any) -> None:
        """Replace the field's value, or add the field (keeping ids ascending, as Thrift writers do)."""
        for item in self.fields:
            if item.id == field_id:
                item.type, item.value = field_type, value
                return
        self.fields.append(Field(field_id, field_type, value))
        self.fields.sort(key=lambda f: f.id)

    def items(self, field_id: int) -> list[Any]:
        """The elements of a list field (empty when absent)."""
        value = self.get(field_id)
        return [] if value is None else value[1]


class _Reader:
    def __init__(self, data: bytes, offset: int) -> None:
        self.data, self.pos = memoryview(data), offset

    def take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            raise ThriftError(f"a value runs past the end of the data (offset {self.pos})")
        value = bytes(self.data[self.pos:self.pos + count])
        self.pos += count
        return value

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ThriftError(f"a varint is longer than 10 bytes (offset {self.pos})")

    def zigzag(self) -> int:
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def size(self) -> int:
        count = self.varint()
        if count > len(self.data) - self.pos:  # every element takes at least one byte
            raise ThriftError(f"a length of {count} exceeds the data left (offset {self.pos})")
        return count

    def value(self, kind: int, depth: int) -> Any:
        if kind in (BOOL_TRUE, BOOL_FALSE):
            return kind == BOOL_TRUE
        if kind == BYTE:
            return struct.unpack("<b", self.take(1))[0]
        if kind in (I16, I32, I64):
            return self.zigzag()
        if kind == DOUBLE:
            return struct.unpack("<d", self.take(8))[0]
        if kind == BINARY:
            return self.take(self.size())
        if kind in (LIST, SET):
            header = self.byte()
            count, element = header >> 4, header & 0x0F
            if count == 15:
                count = self.size()
            if element in (BOOL_TRUE, BOOL_FALSE):  # booleans in containers are one byte each
                return element, [self.byte() == BOOL_TRUE for _ in range(count)]
            return element, [self.value(element, depth + 1) for _ in range(count)]
        if kind == MAP:
            count = self.size()
            if not count:
                return 0, 0, []
            types = self.byte()
            return types >> 4, types & 0x0F, [(self.value(types >> 4, depth + 1), self.value(types & 0x0F, depth + 1))
                                             for _ in range(count)]
        if kind == STRUCT:
            return self.struct(depth + 1)
        raise ThriftError(f"unknown compact type {kind} (offset {self.pos})")

    def struct(self, depth: int = 0) -> Struct:
        if depth > _MAX_DEPTH:
            raise ThriftError("structs are nested too deeply")
        result, last = Struct(), 0
        while True:
            header = self.byte()
            if header == 0:
                return result
            delta, kind = header >> 4, header & 0x0F
            field_id = last + delta if delta else self.zigzag()
            result.fields.append(Field(field_id, kind, self.value(kind, depth)))
            last = field_id


def decode_struct(data: bytes, offset: int = 0) -> tuple[Struct, int]:
    """The struct encoded at ``data[offset:]`` and the offset just past it."""
    reader = _Reader(data, offset)
    return reader.struct(), reader.pos


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        if value < 0x80:
            out.append(value)
            return bytes(out)
        out.append((value & 0x7F) | 0x80)
        value >>= 7


def _zigzag(value: int) -> bytes:
    return _varint((value << 1) ^ (value >> 63))


def _value(kind: int, value: Any) -> bytes:
    if kind in (BOOL_TRUE, BOOL_FALSE):
        return b""  # the value is the type nibble itself
    if kind == BYTE:
        return struct.pack("<b", value)
    if kind in (I16, I32, I64):
        return _zigzag(value)
    if kind == DOUBLE:
        return struct.pack("<d", value)
    if kind == BINARY:
        return _varint(len(value)) + bytes(value)
    if kind in (LIST, SET):
        element, items = value
        head = bytes([(len(items) << 4) | element]) if len(items) < 15 else bytes([0xF0 | element]) + _varint(len(items))
        if element in (BOOL_TRUE, BOOL_FALSE):
            return head + bytes(BOOL_TRUE if item else BOOL_FALSE for item in items)
        return head + b"".join(_value(element, item) for item in items)
    if kind == MAP:
        key_type, value_type, pairs = value
        if not pairs:
            return b"\x00"
        return (_varint(len(pairs)) + bytes([(key_type << 4) | value_type])
                + b"".join(_value(key_type, k) + _value(value_type, v) for k, v in pairs))
    if kind == STRUCT:
        return encode_struct(value)
    raise ThriftError(f"unknown compact type {kind}")


def encode_struct(item: Struct) -> bytes:
    """The compact encoding of ``item``."""
    out, last = bytearray(), 0
    for member in item.fields:
        kind = member.type
        if kind in (BOOL_TRUE, BOOL_FALSE):
            kind = BOOL_TRUE if member.value else BOOL_FALSE
        delta = member.id - last
        if 0 < delta <= 15:
            out.append((delta << 4) | kind)
        else:
            out.append(kind)
            out += _zigzag(member.id)
        out += _value(kind, member.value)
        last = member.id
    out.append(0)
    return bytes(out)
