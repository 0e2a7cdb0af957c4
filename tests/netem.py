"""Latency and packet loss on one host's link, in user space: ``tc netem`` over an NFQUEUE.

Linux's ``netem`` queueing discipline is the usual tool, but kernels built without it (``CONFIG_NET_SCH_NETEM``
unset, as on this project's CI machines) refuse ``tc qdisc ... netem``. This does the same job with parts those
kernels have: iptables rules in the host's network namespace hand every packet crossing its ``eth0`` (both
directions) to netfilter queue 0, and this program, running in that namespace, gives each packet its verdict
after ``--delay`` ± ``--jitter`` milliseconds (in arrival order, so TCP sees no reordering), or drops it with
probability ``--loss``. Packets only wait for a verdict in the kernel; their bytes never reach this program
(``NFQNL_COPY_META``).

Run inside the host's namespace (netcluster.Network.shape does this)::

    ip netns exec HOST iptables -A INPUT -i eth0 -j NFQUEUE --queue-num 0
    ip netns exec HOST iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num 0
    ip netns exec HOST python tests/netem.py --delay 20 --jitter 5 --loss 0.01

It prints ``ready`` once bound to the queue and, on SIGTERM, one JSON line of counts (``packets``,
``dropped``) before exiting. The protocol is nfnetlink_queue (linux/netfilter/nfnetlink_queue.h).
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
_QUEUE_SUBSYSTEM = 3 << 8  # NFNL_SUBSYS_QUEUE in the message type's high byte
_PACKET, _VERDICT, _CONFIG = 0, 1, 2  # NFQNL_MSG_*
_REQUEST, _ACK = 1, 4  # NLM_F_*
_ERROR = 2  # NLMSG_ERROR
_CFG_CMD, _CFG_PARAMS, _CFG_QUEUE_MAXLEN = 1, 2, 3  # NFQA_CFG_*
_CMD_BIND = 1
_COPY_META = 1
_PACKET_HDR, _VERDICT_HDR = 1, 2  # NFQA_PACKET_HDR, NFQA_VERDICT_HDR
_DROP, _ACCEPT = 0, 1
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_QUEUE_LENGTH = 20000  # the kernel's default of 1024 overflows at a few ms of delay on a busy link


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, queue: int, attributes: list[bytes], flags: int = _REQUEST) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attributes)
    return _HEADER.pack(_HEADER.size + len(body), _QUEUE_SUBSYSTEM | kind, flags, 0, 0) + body


def _configure(sock: socket.socket, queue: int, attributes: list[bytes]) -> None:
    sock.send(_message(_CONFIG, queue, attributes, _REQUEST | _ACK))
    reply = sock.recv(4096)
    _, kind, *_ = _HEADER.unpack_from(reply)
    code = struct.unpack_from("=i", reply, _HEADER.size)[0] if kind == _ERROR else 0
    if code:
        raise OSError(-code, f"netfilter queue {queue}: configuration refused (is another program bound to it?)")


def _packet_ids(data: bytes):
    """The packet ids of the queue messages in one netlink datagram."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, *_ = _HEADER.unpack_from(data, offset)
        if kind == _QUEUE_SUBSYSTEM | _PACKET:
            position = offset + _HEADER.size + 4  # after struct nfgenmsg
            while position + 4 <= offset + length:
                size, attribute = struct.unpack_from("=HH", data, position)
                if attribute & 0x7FFF == _PACKET_HDR:
                    yield struct.unpack_from(">I", data, position + 4)[0]
                    break
                position += (size + 3) & ~3
        offset += (length + 3) & ~3 if length else len(data)


def run(queue: int, delay: float, jitter: float, loss: float) -> dict[str, int]:
    """Serve ``queue`` until SIGTERM; returns the counts."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    _configure(sock, queue, [_attribute(_CFG_CMD, struct.pack("=BxH", _CMD_BIND, 0))])
    _configure(sock, queue, [_attribute(_CFG_PARAMS, struct.pack(">IB", 0, _COPY_META)),
                             _attribute(_CFG_QUEUE_MAXLEN, struct.pack(">I", _QUEUE_LENGTH))])
    print("ready", flush=True)
    counts = {"packets": 0, "dropped": 0}
    due: list[tuple[float, int, int]] = []  # (release time, packet id, verdict); ids grow, so ties keep order
    latest = 0.0
    while not stopping:
        wait = max(0.0, due[0][0] - time.monotonic()) if due else 0.5
        try:
            readable, _, _ = select.select([sock], [], [], wait)
        except InterruptedError:
            continue
        if readable:
            for packet_id in _packet_ids(sock.recv(1 << 16)):
                counts["packets"] += 1
                verdict = _DROP if random.random() < loss else _ACCEPT
                counts["dropped"] += verdict == _DROP
                # Never earlier than the packet before: jitter must not reorder the stream.
                latest = max(latest, time.monotonic() + delay + random.uniform(-jitter, jitter))
                heapq.heappush(due, (latest, packet_id, verdict))
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, packet_id, verdict = heapq.heappop(due)
            sock.send(_message(_VERDICT, queue, [_attribute(_VERDICT_HDR, struct.pack(">II", verdict, packet_id))]))
    for _, packet_id, _ in due:  # let what is still held through, so stopping never cuts connections
        sock.send(_message(_VERDICT, queue, [_attribute(_VERDICT_HDR, struct.pack(">II", _ACCEPT, packet_id))]))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.0, help="milliseconds each packet is held")
    parser.add_argument("--jitter", type=float, default=0.0, help="± milliseconds around --delay")
    parser.add_argument("--loss", type=float, default=0.0, help="probability (0..1) that a packet is dropped")
    parser.add_argument("--queue", type=int, default=0, help="netfilter queue number (0)")
    args = parser.parse_args(argv)
    counts = run(args.queue, args.delay / 1000, args.jitter / 1000, args.loss)
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
