"""The broker client when the broker is away: retries with backoff, then a clear error; never for a refusal.

A real broker process (``ppml broker serve``) is started late, restarted between a nonce and its release, or
never started at all; the client is ``BrokerKms`` as every executor uses it.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from broker_harness import BrokerProcess

from ppml.errors import KeyAccessError
from ppml.keys.broker_client import BrokerKms, clear_releases
from ppml.keys.keyring import KeyRing

CLAIMS = {"app": "tpch"}
pytestmark = pytest.mark.filterwarnings("ignore::ppml.errors.PpmlInsecureWarning")  # simulated attestation


@pytest.fixture(autouse=True)
def _no_released_keys():
    """Each test asks the broker itself, never taking a key another test was released."""
    clear_releases()
    yield
    clear_releases()


def _client(broker: BrokerProcess, **options) -> BrokerKms:
    return BrokerKms(broker.url, attester="simulated", attester_settings={"claims": CLAIMS},
                     ca=str(broker.pki.ca_path), caller="pytest", **options)


def test_a_broker_that_comes_up_late_is_waited_for(tmp_path, caplog):
    broker = BrokerProcess(tmp_path / "b")
    key, wrapped = broker.keystore.generate_data_key("tpch")
    starter = threading.Timer(2.0, broker.start)
    starter.start()
    try:
        with caplog.at_level(logging.WARNING, logger="ppml.keys.broker"):
            assert _client(broker, retry_for=60).unwrap(wrapped) == key
    finally:
        starter.join()
        broker.stop()
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert retries and all(broker.url in message for message in retries)
    assert [e["decision"] for e in broker.audit_entries() if e["event"] == "release"] == ["allow"]


def test_a_broker_restarted_between_nonce_and_release_is_asked_again(tmp_path):
    broker = BrokerProcess(tmp_path / "b").start()
    key, wrapped = broker.keystore.generate_data_key("tpch")
    client = _client(broker)
    attester = client._attester_instance()

    class RestartingAttester:
        """Restarts the broker after its nonce was issued: the new broker does not know that nonce."""

        restarts = 0

        def attest(self, binding):
            if not self.restarts:
                self.restarts += 1
                broker.stop()
                broker.start()
            return attester.attest(binding)

    client._attester = RestartingAttester()
    try:
        assert client.unwrap(wrapped) == key
    finally:
        broker.stop()
    entries = broker.audit_entries()
    assert [e["event"] for e in entries if e["event"] != "release"] == ["start", "stop", "start", "stop"]
    refused, allowed = [e for e in entries if e["event"] == "release"]
    assert (refused["decision"], refused["code"], allowed["decision"]) == ("deny", "nonce", "allow")


def test_a_broker_that_stays_away_fails_clearly_after_the_retry_time(tmp_path):
    broker = BrokerProcess(tmp_path / "b")  # configured, never started
    _, wrapped = broker.keystore.generate_data_key("tpch")
    started = time.monotonic()
    with pytest.raises(KeyAccessError) as failure:
        _client(broker, retry_for=3).unwrap(wrapped)
    assert time.monotonic() - started < 10
    message = str(failure.value)
    assert f"cannot reach the key broker at {broker.url}" in message and "attempts in" in message
    assert "ConnectError" in message and "local:tpch" in message
    assert "reachable from this host" in failure.value.hint


def test_a_refused_certificate_is_not_retried(tmp_path):
    broker = BrokerProcess(tmp_path / "b").start()
    try:
        _, wrapped = broker.keystore.generate_data_key("tpch")
        client = BrokerKms(broker.url, attester="simulated", attester_settings={"claims": CLAIMS}, retry_for=60)
        started = time.monotonic()
        with pytest.raises(KeyAccessError, match="TLS certificate or handshake was refused") as failure:
            client.unwrap(wrapped)
        assert time.monotonic() - started < 10
        assert "clock" in failure.value.hint and "PPML_BROKER_CA" in failure.value.hint
        # Through a key ring (how files are opened) the broker's own advice reaches the user.
        with pytest.raises(KeyAccessError, match="TLS certificate") as failure:
            KeyRing([client]).unwrap([wrapped], name="table.csv.ppml")
        assert "clock" in failure.value.hint and "PPML_KEYSTORE" not in failure.value.hint
    finally:
        broker.stop()
