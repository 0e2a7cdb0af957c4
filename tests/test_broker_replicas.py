"""Several broker processes: worker processes of one replica, and replicas behind one address without session
affinity. A nonce issued anywhere is accepted once, anywhere, and never twice.

Replicas share the nonce secret (a source: here ``env:``) and the record of used nonces (Redis, started here
on a free loopback port; ``scripts/setup.sh system`` installs redis-server). Each replica keeps its own
signed audit log; the workers of one replica write one log through their supervisor.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import socket
import subprocess
import time

import pytest
from broker_harness import BrokerProcess, free_port, quiet_simulation  # noqa: F401 - autouse

from ppml.attest.evidence import binding_digest
from ppml.broker.audit import verify_audit_log
from ppml.keys.broker_client import BrokerKms
from ppml.keys.broker_protocol import EphemeralKey, release_info

CLAIMS = {"app": "tpch"}
SECRET_ENV = "PPML_TEST_NONCE_SECRET"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A throw-away redis-server on a free loopback port (no persistence)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed: run `bash scripts/setup.sh system` (make test does)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        process.terminate()
        process.wait(10)


def _release(url_of_nonce: BrokerProcess, url_of_release: BrokerProcess, wrapped, *, nonce: bytes | None = None):
    """A nonce from one broker, the release at another (a Service without session affinity)."""
    ephemeral = EphemeralKey()
    if nonce is None:
        with url_of_nonce.client() as http:
            nonce = base64.b64decode(http.post("/v1/nonce").json()["nonce"])
    body = {"nonce": base64.b64encode(nonce).decode(), "public_key": base64.b64encode(ephemeral.public_bytes).decode(),
            "evidence": {"type": "simulated", "report_data": binding_digest(nonce, ephemeral.public_bytes).hex(),
                         "claims": CLAIMS},
            "keys": [wrapped.to_json()]}
    with url_of_release.client() as http:
        return http.post("/v1/keys/release", json=body), nonce, ephemeral


def test_replicas_accept_each_others_nonces_once(tmp_path, redis_url):
    url, _ = redis_url
    secret = secrets.token_hex(32)
    first = BrokerProcess(tmp_path / "a", extra={"replica": "a", "nonces": {"secret": f"env:{SECRET_ENV}",
                                                                             "redis": {"url": url}}},
                          env={SECRET_ENV: secret})
    second = BrokerProcess(tmp_path / "b", kms=[{"backend": "local", "keystore": str(first.keystore.path),
                                                 "passphrase": f"file:{tmp_path / 'a' / 'keys' / 'passphrase'}"}],
                           extra={"replica": "b", "nonces": {"secret": f"env:{SECRET_ENV}", "redis": {"url": url}}},
                           env={SECRET_ENV: secret})
    lone = BrokerProcess(tmp_path / "c", kms=second.config_kms())  # its own secret: the others' nonces are unknown
    key, wrapped = first.keystore.generate_data_key("tpch")
    with first, second, lone:
        response, nonce, ephemeral = _release(first, second, wrapped)  # issued by a, used at b
        assert response.status_code == 200, response.text
        sealed = base64.b64decode(response.json()["keys"][0]["sealed"])
        assert ephemeral.open(sealed, release_info(nonce, wrapped), reference="t") == key
        for replica in (second, first):  # never twice, wherever it is replayed
            replay, _, _ = _release(first, replica, wrapped, nonce=nonce)
            assert replay.status_code == 403 and "already used" in replay.json()["error"]["message"]
        assert _release(second, first, wrapped)[0].status_code == 200  # and the other way round
        foreign, _, _ = _release(lone, first, wrapped)
        assert foreign.status_code == 403 and "unknown or expired" in foreign.json()["error"]["message"]
    for replica in (first, second):
        report = verify_audit_log(replica.audit_log, keys=[replica.verification_key()])
        assert report.allowed == 1 and report.entries >= 4


def test_without_the_used_nonce_store_a_release_is_refused_not_waved_through(tmp_path, redis_url):
    url, _ = redis_url
    port = free_port()
    redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        process = BrokerProcess(tmp_path / "b", extra={"nonces": {"secret": f"env:{SECRET_ENV}",
                                                                  "redis": {"url": f"redis://127.0.0.1:{port}/0"}}},
                                env={SECRET_ENV: secrets.token_hex(32)})
        key, wrapped = process.keystore.generate_data_key("tpch")
        with process:
            assert _release(process, process, wrapped)[0].status_code == 200
            redis.terminate()
            redis.wait(10)
            response, _, _ = _release(process, process, wrapped)
            assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
    finally:
        if redis.poll() is None:
            redis.terminate()
    assert process.audit_entries()[-2]["code"] == "unavailable"


def test_workers_of_one_replica_share_one_ledger(tmp_path):
    """Two worker processes: releases over many connections land on both, a nonce is used once whichever
    worker sees it, and one signed chain records them all, with the workers' counts in the stop entry."""
    process = BrokerProcess(tmp_path / "b", extra={"workers": 2}, limits={"requests_per_second": 1000, "burst": 1000})
    key, wrapped = process.keystore.generate_data_key("tpch")
    with process:
        client = BrokerKms(process.url, attester="simulated", attester_settings={"claims": CLAIMS},
                           ca=str(process.pki.ca_path), caller="pytest")
        assert client.unwrap(wrapped) == key
        client.close()
        response, nonce, _ = _release(process, process, wrapped)
        assert response.status_code == 200
        for _ in range(20):  # new connections each time: the kernel hands them to either worker
            replay, _, _ = _release(process, process, wrapped, nonce=nonce)
            assert replay.status_code == 403 and replay.json()["error"]["code"] == "nonce"
        for _ in range(10):
            assert _release(process, process, wrapped)[0].status_code == 200
    entries = process.audit_entries()
    assert verify_audit_log(process.audit_log, keys=[process.verification_key()]).allowed == 12
    assert {e["worker"] for e in entries if e["event"] == "release"} == {0, 1}
    assert entries[0]["workers"] == 2 and entries[-1]["event"] == "stop"
    counters = entries[-1]["counters"]
    assert counters["released"] == 12 and counters["nonces"] == 12 and counters["kms_unwraps"] >= 1


def test_a_shared_nonce_secret_without_a_shared_used_nonce_record_is_refused(tmp_path):
    """Replicas sharing only the secret would each accept a nonce the other had already used."""
    import yaml

    from ppml.broker.config import load_config
    from ppml.errors import ConfigError

    process = BrokerProcess(tmp_path / "conf")
    config = yaml.safe_load(process.config_path.read_text())
    for nonces, message in (({"secret": f"env:{SECRET_ENV}"}, "nonces.secret needs nonces.redis"),
                            ({"redis": {"url": "redis://127.0.0.1:1/0"}}, "nonces.redis needs nonces.secret")):
        process.config_path.write_text(yaml.safe_dump({**config, "nonces": nonces}))
        with pytest.raises(ConfigError, match=message):
            load_config(process.config_path)
    process.config_path.write_text(yaml.safe_dump({**config, "nonces": {"memory_mib": 8}}))
    assert load_config(process.config_path).nonces.secret is None
