"""What crossed the wire: a pcap file read back into TCP streams, and searched.

:func:`read_capture` parses the classic pcap format tcpdump writes (Ethernet frames, IPv4), keeps every frame's
addresses, and reassembles each direction of every TCP connection into one byte string, placing each
segment at its sequence number so retransmissions and reordering do not matter and a secret split across two
segments is still found. :meth:`Capture.find` then says in which streams (and in how many raw frames) a byte
string occurs.
"""

from __future__ import annotations

import base64
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Capture", "Flow", "forms", "read_capture", "tls_records"]

_ETHERNET = 1  # pcap link type
_IPV4, _ARP = 0x0800, 0x0806
_TCP = 6


@dataclass(frozen=True, order=True)
class Flow:
    """One direction of one TCP connection; ``connection`` tells apart connections that reused the same ports."""

    src: str
    sport: int
    dst: str
    dport: int
    connection: int = 0

    def __str__(self) -> str:
        return f"{self.src}:{self.sport} → {self.dst}:{self.dport}"


@dataclass
class Capture:
    """Reassembled TCP streams and what else was seen."""

    frames: int = 0
    streams: dict[Flow, bytes] = field(default_factory=dict)
    ip_pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)  # frames that are neither IPv4 nor ARP, by EtherType
    raw: bytes = b""

    def find(self, needle: bytes) -> list[Flow]:
        """The streams containing ``needle``."""
        return sorted(flow for flow, data in self.streams.items() if needle in data)

    def in_frames(self, needle: bytes) -> bool:
        """Whether ``needle`` occurs anywhere in the capture file's bytes (frames as captured)."""
        return needle in self.raw

    def to_port(self, port: int) -> dict[Flow, bytes]:
        """The streams sent to ``port`` (a service's requests)."""
        return {flow: data for flow, data in self.streams.items() if flow.dport == port}

    def bytes_between(self, src: str, dst: str) -> int:
        return sum(len(d) for f, d in self.streams.items() if f.src == src and f.dst == dst)


def forms(secret: bytes) -> list[bytes]:
    """``secret`` as it could appear on the wire: raw, hex (both cases), base64 and base64url (padded or not)."""
    encoded = [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
               base64.urlsafe_b64encode(secret)]
    return list(dict.fromkeys(encoded + [e.rstrip(b"=") for e in encoded]))


#: TLS record content types: change_cipher_spec, alert, handshake, application_data.
_TLS_CLEAR_TYPES, _TLS_APPLICATION_DATA = (20, 21, 22), 23
_TLS_MAX_RECORD = 2**14 + 2048  # a TLSCiphertext's longest fragment (RFC 5246, 6.2.3)


def tls_records(stream: bytes) -> tuple[str | None, bytes]:
    """Walk ``stream`` as TLS records from its first byte to its last.

    Returns what breaks the framing (``None`` when nothing does: every byte belongs to a record) and the bytes
    TLS leaves in clear: each record's header and the bodies of records other than application data. Searching
    those, not the application data (ciphertext, where any 4-byte string turns up by chance about once in 4 GB),
    is what can tell cleartext on the wire.
    """
    if not stream:
        return "no bytes", b""
    clear, offset = bytearray(), 0
    while offset < len(stream):
        header = stream[offset:offset + 5]
        if len(header) < 5:
            return f"{len(header)} bytes after the last record", bytes(clear)
        kind, major, minor, length = header[0], header[1], header[2], int.from_bytes(header[3:5], "big")
        known = kind in (*_TLS_CLEAR_TYPES, _TLS_APPLICATION_DATA) and major == 3 and minor <= 4
        if not known or length > _TLS_MAX_RECORD:
            return f"no TLS record header at byte {offset}: {header!r}", bytes(clear)
        if offset + 5 + length > len(stream):
            return f"the record at byte {offset} is cut short", bytes(clear)
        clear += header
        if kind != _TLS_APPLICATION_DATA:
            clear += stream[offset + 5:offset + 5 + length]
        offset += 5 + length
    return None, bytes(clear)


def _frames(data: bytes):
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a pcap file (pcapng is not supported: run tcpdump without --pcapng)")
    link_type = struct.unpack_from(endian + "I", data, 20)[0]
    if link_type != _ETHERNET:
        raise ValueError(f"pcap link type {link_type}, expected Ethernet (capture on the bridge)")
    offset = 24
    while offset + 16 <= len(data):
        captured, original = struct.unpack_from(endian + "II", data, offset + 8)
        if captured != original:
            raise ValueError(f"a frame was cut to {captured} of {original} bytes: capture with -s 0")
        yield data[offset + 16:offset + 16 + captured]
        offset += 16 + captured


def read_capture(path: Path) -> Capture:
    """Parse ``path`` (tcpdump ``-w`` output) into a :class:`Capture`."""
    data = path.read_bytes()
    capture = Capture(raw=data)
    segments: dict[Flow, list[tuple[int, bytes]]] = defaultdict(list)
    connections: Counter[tuple[str, int, str, int]] = Counter()  # SYNs seen per client → server address pair
    for frame in _frames(data):
        capture.frames += 1
        ether_type = struct.unpack_from("!H", frame, 12)[0]
        if ether_type == _ARP:
            continue
        if ether_type != _IPV4:
            capture.other[hex(ether_type)] += 1
            continue
        ip = frame[14:]
        header_length = (ip[0] & 0x0F) * 4
        total_length = struct.unpack_from("!H", ip, 2)[0]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        capture.ip_pairs[(src, dst)] += 1
        if ip[9] != _TCP:
            continue
        tcp = ip[header_length:total_length]
        sport, dport, seq = struct.unpack_from("!HHI", tcp)
        payload = tcp[(tcp[12] >> 4) * 4:]
        syn, ack = tcp[13] & 0x02, tcp[13] & 0x10
        if syn and not ack:  # a new connection, possibly on ports an earlier one used
            connections[(src, sport, dst, dport)] += 1
        opened = connections[(src, sport, dst, dport)] or connections[(dst, dport, src, sport)]
        flow = Flow(src, sport, dst, dport, opened)
        if syn:  # the stream starts after it
            segments[flow].append((seq + 1, b""))
        elif payload:
            segments[flow].append((seq, payload))
    for flow, parts in segments.items():
        capture.streams[flow] = _assemble(parts)
    return capture


def _assemble(parts: list[tuple[int, bytes]]) -> bytes:
    """The stream of one direction: each payload at its distance from the first sequence number seen (the one
    after the SYN when the capture saw the SYN), sequence numbers wrapping at 2**32; gaps stay zero."""
    base = parts[0][0]
    placed = []
    for seq, payload in parts:
        offset = (seq - base + 2**31) % 2**32 - 2**31  # signed: a retransmission may start before `base`
        if offset < 0:
            payload, offset = payload[-offset:], 0
        placed.append((offset, payload))
    stream = bytearray(max((offset + len(p) for offset, p in placed), default=0))
    for offset, payload in placed:
        stream[offset:offset + len(payload)] = payload
    return bytes(stream)
