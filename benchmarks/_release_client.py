"""The release load generator: asyncio clients doing the full key-release protocol, lean enough that the
load generator does not hide the broker's cost on a small machine.

Each client holds one keep-alive TLS connection per broker replica and speaks HTTP/1.1 itself (request line,
three headers, ``content-length``): httpx costs more client CPU than a release costs the broker. Every release
is the whole protocol, as a fresh process without a release cache would do it: ``POST /v1/nonce``; a new
X25519 key pair; evidence bound to SHA-256(nonce || public key), made fresh for that nonce; ``POST
/v1/keys/release``; the HPKE answer opened and its key id checked. With two replicas, the nonce comes from one
and the release goes to the other (a Service without session affinity).

Evidence kinds:

* ``maa``: a Microsoft Azure Attestation token for an SGX enclave, signed ES256 by the benchmark's "MAA"
  key (a real MAA signs RS256; ES256 costs the client less, and an ES256 check costs the broker more than an
  RS256 one), with ``x-ms-sgx-ehd`` carrying the binding.
* ``sgx``: a v3 DCAP quote of the test platform (tests/sgx_platform.py) over the binding, with collateral in
  the evidence (what an ``sgx-gramine`` attester with ``pccs_url`` sends).
* ``sgx-sample``: Intel's real sample quote and collateral, for a broker that cannot trust the test platform:
  verified in full, then refused as not bound to the request (403), which is what is counted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import time
from collections import Counter
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["run_clients"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Connection:
    """One keep-alive HTTP/1.1 connection over TLS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str, context: ssl.SSLContext) -> _Connection:
        host, port = url.removeprefix("https://").rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port), ssl=context, server_hostname=host))

    async def post(self, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(b"POST %s HTTP/1.1\r\nhost: broker\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


class _Evidence:
    """Makes the ``evidence`` JSON text for a binding (see the module docstring)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.kind = spec["evidence"]
        if self.kind == "maa":
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            self._key = load_pem_private_key(spec["maa_key"].encode(), None)
            self._header = _b64url(json.dumps({"alg": "ES256", "kid": spec["maa_kid"], "typ": "JWT"}).encode())
            self._claims = spec["maa_claims"]
        elif self.kind == "sgx":
            import sys

            sys.path.insert(0, spec["tests"])
            from sgx_platform import SgxPlatform

            self._platform = SgxPlatform.loads(spec["sgx_platform"])
            self._collateral = json.dumps(self._platform.collateral)
        else:
            self._fixed = json.dumps(spec["sample_evidence"])

    def __call__(self, binding: bytes) -> str:
        if self.kind == "maa":
            now = int(time.time())
            payload = _b64url(json.dumps({**self._claims, "iat": now, "nbf": now, "exp": now + 3600,
                                          "x-ms-sgx-ehd": _b64url(binding)}).encode())
            signing_input = f"{self._header}.{payload}"
            r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
            token = f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
            return f'{{"type":"maa","token":"{token}"}}'
        if self.kind == "sgx":
            quote = base64.b64encode(self._platform.quote(binding)).decode()
            return f'{{"type":"sgx","collateral":{self._collateral},"quote":"{quote}"}}'
        return self._fixed


def _info(nonce: bytes, wrapped, *, baseline: bool) -> bytes:
    """The HPKE info; ``baseline``: as brokers before length-prefixed names made it."""
    from ppml.keys.broker_protocol import PROTOCOL, release_info

    if not baseline:
        return release_info(nonce, wrapped)
    digest = hashlib.sha256(f"{wrapped.kms}\0{wrapped.key}\0{wrapped.version}\0".encode() + wrapped.wrapped).digest()
    return PROTOCOL.encode() + b"\0release\0" + nonce + digest


async def _clients(spec: dict[str, Any]) -> dict[str, Any]:
    from ppml.attest.evidence import binding_digest
    from ppml.crypto.envelope import WrappedKey
    from ppml.keys.broker_protocol import NONCE_PATH, RELEASE_PATH, EphemeralKey

    context = ssl.create_default_context(cafile=spec["ca"])
    wrapped = [WrappedKey.from_json(w) for w in spec["wrapped"]]
    keys_json = [json.dumps(w.to_json()) for w in wrapped]
    make_evidence = _Evidence(spec)
    expect_refusal = spec["evidence"] == "sgx-sample"
    start, end, urls = spec["start"], spec["end"], spec["urls"]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    cold = 0

    async def client(index: int) -> None:
        nonlocal cold
        connections = [await _Connection.open(url, context) for url in urls]
        turn, done_any = spec["proc"] * 7919 + index, False
        try:
            while (began := time.monotonic()) < end:
                which, turn = turn % len(wrapped), turn + 1
                issuer, releaser = connections[turn % len(urls)], connections[(turn + 1) % len(urls)]
                try:
                    status, data = await issuer.post(NONCE_PATH)
                    if status != 200:
                        raise RuntimeError(f"nonce {status}")
                    nonce = base64.b64decode(json.loads(data)["nonce"])
                    ephemeral = EphemeralKey()
                    public = ephemeral.public_bytes
                    body = (f'{{"nonce":"{base64.b64encode(nonce).decode()}","public_key":'
                            f'"{base64.b64encode(public).decode()}","evidence":'
                            f'{make_evidence(binding_digest(nonce, public))},"keys":[{keys_json[which]}]}}').encode()
                    status, data = await releaser.post(RELEASE_PATH, body)
                    if expect_refusal:
                        if status != 403 or b"not bound" not in data:
                            raise RuntimeError(f"release {status}: expected the binding refusal")
                    else:
                        if status != 200:
                            raise RuntimeError(f"release {status}: {data[:100]!r}")
                        answer = json.loads(data)["keys"][0]
                        if answer.get("status") != "released":
                            raise RuntimeError(f"denied: {answer.get('code')}")
                        key = ephemeral.open(base64.b64decode(answer["sealed"]),
                                             _info(nonce, wrapped[which], baseline=spec["baseline"]),
                                             reference=wrapped[which].reference)
                        if key.key_id != spec["key_ids"][which]:
                            raise RuntimeError("wrong key")
                except (asyncio.IncompleteReadError, ConnectionError):
                    errors["connection closed"] += 1
                    connections = [await _Connection.open(url, context) for url in urls]
                    continue
                except Exception as exc:  # noqa: BLE001 - counted and reported, never silently
                    errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    continue
                finished = time.monotonic()
                if began >= start and finished <= end:
                    latencies.append(finished - began)
                    done_any = True
        finally:
            for connection in connections:
                connection.close()
            if not done_any:
                cold += 1

    cpu_start = {}

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu_start["at"] = time.process_time()

    sampler = asyncio.get_running_loop().create_task(sample_cpu())
    await asyncio.gather(*(client(i) for i in range(spec["clients"])))
    await sampler
    return {"latencies": latencies, "errors": dict(errors), "cold_clients": cold,
            "cpu": time.process_time() - cpu_start.get("at", time.process_time())}


def run_clients(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec["clients"]`` clients in this process until ``spec["end"]`` (a process pool's task)."""
    import warnings

    warnings.simplefilter("ignore")
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_clients(spec))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_clients(spec))

