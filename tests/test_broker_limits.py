"""The key broker against cheap attacks: requests that cost the sender nothing must cost the broker little.

A refused request records a bounded entry, refusals are budgeted per client (counted, never lost), the
record of used nonces is sized by memory, the audit log commits concurrent entries in groups, and slow or
idle connections from one host cannot keep legitimate releases from being served.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import time

import httpx
import pytest
from broker_harness import BrokerProcess, quiet_simulation  # noqa: F401 - autouse

from ppml.attest.evidence import binding_digest
from ppml.broker.nonces import BYTES_PER_USED_NONCE, MemoryUsedNonces, NonceStoreError
from ppml.crypto.envelope import WrappedKey
from ppml.keys.broker_client import BrokerKms, clear_releases
from ppml.keys.broker_protocol import EphemeralKey

CLAIMS = {"app": "tpch"}


def _made_up_request(keys: list[WrappedKey]) -> dict:
    nonce, ephemeral = os.urandom(32), EphemeralKey()
    return {"nonce": base64.b64encode(nonce).decode(), "public_key": base64.b64encode(ephemeral.public_bytes).decode(),
            "evidence": {"type": "simulated", "report_data": binding_digest(nonce, ephemeral.public_bytes).hex(),
                         "claims": CLAIMS},
            "keys": [k.to_json() for k in keys]}


def _client_from(process: BrokerProcess, address: str) -> httpx.Client:
    """An HTTPS client whose connections leave from ``address`` (any 127.x.y.z is this host)."""
    trust = ssl.create_default_context(cafile=str(process.pki.ca_path))
    return httpx.Client(base_url=process.url, timeout=30,
                        transport=httpx.HTTPTransport(local_address=address, verify=trust))


def test_a_refused_request_records_a_bounded_entry(tmp_path):
    """A made-up nonce and 64 keys with long names: the entry names 8 keys of at most 128 characters."""
    keys = [WrappedKey("local", f"{i:04d}" + "k" * 1000, "1", b"\x01" * 64) for i in range(64)]
    with BrokerProcess(tmp_path / "b") as process, process.client() as http:
        response = http.post("/v1/keys/release", json=_made_up_request(keys))
        assert response.status_code == 403 and response.json()["error"]["code"] == "nonce"
    line = process.audit_log.read_text().splitlines()[1]
    entry = process.audit_entries()[1]
    assert entry["code"] == "nonce" and entry["keys_total"] == 64 and len(entry["keys"]) == 8
    assert all(len(k) <= 128 for k in entry["keys"]) and len(line) < 2500, len(line)


def test_refusal_entries_are_budgeted_per_client_and_counted(tmp_path):
    limits = {"refusals_per_second": 0.5, "refusal_burst": 3, "requests_per_second": 1000, "burst": 1000}
    process = BrokerProcess(tmp_path / "b", limits=limits)
    key, wrapped = process.keystore.generate_data_key("tpch")
    with process:
        with process.client() as http:
            for _ in range(30):
                assert http.post("/v1/keys/release", json=_made_up_request([wrapped])).status_code == 403
        with _client_from(process, "127.0.0.2") as other:  # another client still has its own budget
            assert other.post("/v1/keys/release", json=_made_up_request([wrapped])).status_code == 403
        client = BrokerKms(process.url, attester="simulated", attester_settings={"claims": CLAIMS},
                           ca=str(process.pki.ca_path), caller="pytest")
        assert client.unwrap(wrapped) == key  # a genuine release is never held back
        client.close()
    entries = process.audit_entries()
    refused = [e for e in entries if e.get("code") == "nonce"]
    mine = [e for e in refused if e["caller"]["address"] == "127.0.0.1"]
    assert 3 <= len(mine) <= 5 and [e["caller"]["address"] for e in refused].count("127.0.0.2") == 1
    assert [e["decision"] for e in entries if e.get("key") == "local:tpch"] == ["allow"]
    held = sum(e.get("suppressed_before", {}).get("nonce", 0) for e in mine)
    held += sum(e["counts"].get("nonce", 0) for e in entries if e["event"] == "suppressed")
    assert len(mine) + held == 30  # every refusal is accounted for
    assert entries[-1]["event"] == "stop" and entries[-1]["counters"]["denied"] == 31


def test_the_used_nonce_record_is_sized_by_memory_not_by_a_count():
    """The default budget (64 MiB) holds far more than the 200,000 used nonces that once refused everything;
    a full record refuses rather than forgets (forgetting would allow a replay)."""
    import struct
    import tracemalloc

    now = int(time.time())
    store = MemoryUsedNonces(64 * 1024 * 1024)
    assert store.capacity > 400_000
    tracemalloc.start()  # measured on the first 50,000 (tracing is slow), at a rate that can fill a budget
    before = tracemalloc.get_traced_memory()[0]
    for index in range(50_000):
        assert store.record(struct.pack(">QQ", now - index // 5000, index) + bytes(16), now + 60)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used / 50_000 <= BYTES_PER_USED_NONCE, used / 50_000
    for index in range(50_000, 250_000):
        assert store.record(struct.pack(">QQ", now - index // 5000, index) + bytes(16), now + 60)
    fresh = struct.pack(">QQ", now, 2**63) + bytes(16)
    assert store.record(fresh, now + 60) and not store.record(fresh, now + 60)

    small = MemoryUsedNonces(10 * BYTES_PER_USED_NONCE)
    for index in range(10):
        small.record(struct.pack(">QQ", now, index) + bytes(16), now + 60)
    with pytest.raises(NonceStoreError, match="refusing rather than forgetting"):
        small.record(struct.pack(">QQ", now, 99) + bytes(16), now + 60)
    expired = MemoryUsedNonces(10 * BYTES_PER_USED_NONCE)
    for index in range(10):
        expired.record(struct.pack(">QQ", now - 120, index) + bytes(16), now - 60)
    assert expired.record(struct.pack(">QQ", now, 99) + bytes(16), now + 60)  # expired ones made room


def test_concurrent_entries_are_made_durable_in_groups(tmp_path):
    """One write and fsync for the entries that arrive while the previous one runs, not one per entry."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ppml.broker.audit import AuditSigner, verify_audit_log
    from ppml.broker.ledger import RefusalBudget, open_ledger

    signer = AuditSigner(Ed25519PrivateKey.generate())

    async def run() -> int:
        ledger = await open_ledger(str(tmp_path / "a.jsonl"), signer, MemoryUsedNonces(1 << 20),
                                   RefusalBudget(1, 1), sink=None, replica="r", interval=60)
        writes = 0
        write = ledger.audit.write

        def counting(data, last):
            nonlocal writes
            writes += 1
            time.sleep(0.01)  # a slow disk
            write(data, last)

        ledger.audit.write = counting
        await asyncio.gather(*(ledger.append([{"event": "release", "decision": "allow", "key": f"k{i}"}])
                               for i in range(200)))
        await ledger.stop()
        return writes

    writes = asyncio.run(run())
    assert writes < 20, writes
    assert verify_audit_log(tmp_path / "a.jsonl", keys=[signer.public_key]).entries == 202


# -- slow and idle connections --------------------------------------------------------------------------------


def _slow_connections(port: int, ca: str, count: int) -> list:
    """``count`` connections from 127.0.0.2 that stall: some complete TLS and send part of the headers, some
    send whole headers and part of the body, some never start TLS."""
    context = ssl.create_default_context(cafile=ca)
    held = []
    for index in range(count):
        raw = socket.socket()
        raw.bind(("127.0.0.2", 0))
        raw.connect(("127.0.0.1", port))
        if index % 3 == 2:
            held.append(raw)  # TCP only: the TLS handshake never comes
            continue
        tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
        if index % 3 == 0:
            tls.sendall(b"POST /v1/keys/release HTTP/1.1\r\nHost: x\r\nContent-Le")
        else:
            tls.sendall(b"POST /v1/keys/release HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"nonce\"")
        held.append(tls)
    return held


def test_slow_connections_from_one_host_do_not_stop_releases(tmp_path):
    """Twelve stalled connections against max_concurrency 8: releases from another host keep flowing, and
    the stalled ones are cut off after the timeouts."""
    limits = {"max_concurrency": 8, "max_connections_per_address": 3, "handshake_timeout": "2s",
              "header_timeout": "2s", "body_timeout": "2s"}
    process = BrokerProcess(tmp_path / "b", limits=limits)
    key, wrapped = process.keystore.generate_data_key("tpch")
    with process:
        held = _slow_connections(process.port, str(process.pki.ca_path), 12)
        try:
            client = BrokerKms(process.url, attester="simulated", attester_settings={"claims": CLAIMS},
                               ca=str(process.pki.ca_path), caller="pytest")
            started = time.monotonic()
            for _ in range(5):
                clear_releases()
                assert client.unwrap(wrapped) == key
            assert time.monotonic() - started < 10
            client.close()
            deadline = time.monotonic() + 10
            for connection in held:  # each is closed by the broker: EOF, a reset, or a 503/408 then EOF
                connection.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    while connection.recv(4096):
                        pass
                except (ConnectionError, ssl.SSLError):
                    pass
        finally:
            for connection in held:
                connection.close()
    assert sum(e.get("decision") == "allow" for e in process.audit_entries()) == 5
