"""The audit log's hash chain detects any edited, dropped, inserted or reordered entry (and a cut end, given the head)."""

from __future__ import annotations

import json
import os
import stat

import pytest
from broker_harness import recompute_chain
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppml.broker.audit import AuditLog, verify_audit_log
from ppml.cli.main import main
from ppml.errors import ConfigError, IntegrityError


def _log(path, count: int) -> AuditLog:
    log = AuditLog(path, fsync=False)
    for i in range(count):
        log.append("release", decision="allow" if i % 2 else "deny", key=f"local:k{i}", reason=f"r{i}")
    return log


def test_a_written_log_verifies_and_is_private(tmp_path):
    log = _log(tmp_path / "a.jsonl", 5)
    report = verify_audit_log(log.path, expect_head=log.head)
    assert (report.entries, report.allowed, report.denied, report.head) == (5, 2, 3, log.head)
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o600


def test_reopening_continues_the_chain_and_refuses_a_broken_log(tmp_path):
    path = tmp_path / "a.jsonl"
    _log(path, 3).close()
    log = AuditLog(path, fsync=False)
    log.append("release", decision="allow")
    assert verify_audit_log(path).entries == 4
    with pytest.raises(ConfigError, match="in use by another process"):
        AuditLog(path)  # a second writer would fork the chain
    log.close()
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    with pytest.raises(IntegrityError, match="line 2"):
        AuditLog(path)


lines_strategy = st.integers(min_value=2, max_value=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=lines_strategy, data=st.data())
def test_any_tampering_is_detected(tmp_path_factory, count, data):
    path = tmp_path_factory.mktemp("audit") / "log.jsonl"
    log = _log(path, count)
    lines = path.read_text().splitlines()
    kind = data.draw(st.sampled_from(["edit", "drop", "swap", "duplicate", "cut"]))
    i = data.draw(st.integers(0, count - 2))
    if kind == "edit":
        entry = json.loads(lines[i])
        entry["decision"] = "allow" if entry["decision"] == "deny" else "deny"
        lines[i] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    elif kind == "drop":
        del lines[i]
    elif kind == "swap":
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif kind == "duplicate":
        lines.insert(i, lines[i])
    else:
        lines = lines[: i + 1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IntegrityError):
        verify_audit_log(path, expect_head=log.head)


def test_rehashing_an_edited_line_still_breaks_the_chain(tmp_path):
    import hashlib

    log = _log(tmp_path / "a.jsonl", 4)
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[0])
    assert entry["decision"] == "deny"
    entry["decision"] = "allow"
    body = {k: v for k, v in entry.items() if k != "hash"}
    entry["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    lines[0] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    log.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IntegrityError, match="line 2: does not follow"):
        verify_audit_log(log.path)


def test_cli_audit_verify(tmp_path, capsys):
    log = _log(tmp_path / "a.jsonl", 3)
    assert main(["broker", "audit", "verify", str(log.path), "--json", "--expect-head", log.head]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 3
    text = log.path.read_text().replace('"r1"', '"r9"')
    log.path.write_text(text)
    assert main(["broker", "audit", "verify", str(log.path)]) == 4
    assert "line 2: its content does not match its hash" in capsys.readouterr().err


def test_a_line_that_parses_the_same_but_is_not_what_the_broker_wrote_is_refused(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl", fsync=False)
    log.append("release", caller={"address": "10.0.0.7"}, decision="deny", reason="no")
    lines = log.path.read_text().splitlines()
    # A duplicate key placed first: JSON parsers keep the last value, so the hash still matches, but tools
    # that read the first value would see a forged caller.
    assert lines[0].startswith('{"caller":{')
    lines[0] = '{"caller":"forged",' + lines[0][1:]
    log.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IntegrityError, match="line 1: not in the broker's canonical form"):
        verify_audit_log(log.path)


def test_an_incomplete_last_line_is_named_as_such(tmp_path):
    log = _log(tmp_path / "a.jsonl", 2)
    log.close()
    log.path.write_bytes(log.path.read_bytes()[:-20])
    with pytest.raises(IntegrityError, match="line 2: incomplete"):
        AuditLog(log.path)


# -- signed logs: a rewrite without the audit key is found ------------------------------------------------------


def _signer():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ppml.broker.audit import AuditSigner

    return AuditSigner(Ed25519PrivateKey.generate())


def _signed_log(path, signer, count: int = 6) -> AuditLog:
    log = AuditLog(path, signer=signer, fsync=False)
    log.append("start", log_id=log.log_id, key_id=signer.key_id, previous_head=None)
    for i in range(count):
        log.append("release", decision="allow" if i % 2 else "deny", key=f"local:k{i}", reason=f"r{i}")
    return log


@pytest.mark.parametrize("variant", ["old-signatures", "own-key", "no-signatures"])
def test_deleting_entries_and_recomputing_the_chain_is_found_with_the_key(tmp_path, variant, capsys):
    from cryptography.hazmat.primitives import serialization

    signer = _signer()
    log = _signed_log(tmp_path / "a.jsonl", signer)
    log.close()
    lines = log.path.read_text().splitlines()
    attacker = _signer()
    keep_lines = recompute_chain(lines, lambda e: e.get("decision") != "allow",
                             sign=attacker if variant == "own-key" else None)
    if variant == "no-signatures":
        keep_lines = [json.dumps({k: v for k, v in json.loads(line).items() if k != "sig"}, sort_keys=True,
                                 separators=(",", ":")) for line in keep_lines]
    log.path.write_text("\n".join(keep_lines) + "\n")
    assert verify_audit_log(log.path).entries == 4  # the chain alone cannot tell
    with pytest.raises(IntegrityError, match="signature does not verify|no line is signed"):
        verify_audit_log(log.path, keys=[signer.public_key])
    if variant != "no-signatures":  # a log with no signature at all looks like one from before audit keys
        with pytest.raises(IntegrityError):
            AuditLog(log.path, signer=signer)  # nor does a restarted broker extend it
    pub = tmp_path / "audit.pub"
    pub.write_bytes(signer.public_key.public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    capsys.readouterr()
    assert main(["broker", "audit", "verify", str(log.path), "--key", str(pub)]) == 4
    assert "ppml: error:" in capsys.readouterr().err


def test_a_signed_log_verifies_and_names_its_key(tmp_path):
    signer = _signer()
    log = _signed_log(tmp_path / "a.jsonl", signer)
    report = verify_audit_log(log.path, keys=[signer.public_key], expect_head=log.head)
    assert (report.entries, report.signed, report.unsigned_prefix, report.key_ids) == (7, 7, 0, (signer.key_id,))
    other = _signer()
    with pytest.raises(IntegrityError, match=f"signed by audit key {signer.key_id}, which is not among the keys"):
        verify_audit_log(log.path, keys=[other.public_key])


def test_an_old_unsigned_log_is_extended_signed_and_verifies_with_its_unsigned_start(tmp_path):
    path = tmp_path / "a.jsonl"
    _log(path, 3).close()  # written before audit keys
    signer = _signer()
    log = AuditLog(path, signer=signer, fsync=False)
    log.append("start", log_id=log.log_id, key_id=signer.key_id, previous_head={"seq": 2, "hash": log.head})
    log.append("release", decision="allow", key="local:k")
    log.close()
    report = verify_audit_log(path, keys=[signer.public_key])
    assert (report.entries, report.unsigned_prefix, report.signed) == (5, 3, 2)
    with path.open("a") as handle:  # an unsigned line after signed ones: written without the key
        entry = json.loads(path.read_text().splitlines()[-1])
        handle.write(recompute_chain([json.dumps(entry)], lambda e: True)[0].replace('"seq":0', '"seq":5') + "\n")
    with pytest.raises(IntegrityError):
        verify_audit_log(path, keys=[signer.public_key])


def test_published_heads_find_lines_cut_off_the_end(tmp_path):
    import asyncio

    from ppml.broker.heads import check_heads, head_record, open_sink, published_seqs

    signer = _signer()
    log = _signed_log(tmp_path / "a.jsonl", signer)
    sink = open_sink(f"file:{tmp_path / 'heads.jsonl'}", where="test")
    middle = verify_audit_log(log.path).entries - 1
    asyncio.run(sink.append(head_record(signer, replica="r", log_id=log.log_id, seq=middle, digest=log.head)))
    records = asyncio.run(sink.read(whole=True))
    report = verify_audit_log(log.path, keys=[signer.public_key], collect=published_seqs(records, [signer.public_key]))
    assert check_heads(report, records, [signer.public_key], where="log") == 1
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join(lines[:-2]) + "\n")  # a valid, signed, shorter log
    report = verify_audit_log(log.path, keys=[signer.public_key], collect=published_seqs(records, [signer.public_key]))
    with pytest.raises(IntegrityError, match="is not in the log, which is shorter"):
        check_heads(report, records, [signer.public_key], where="log")
    # A head record not signed by the audit key is no evidence either way.
    forged = dict(records[0])
    assert published_seqs([{**forged, "seq": 1, "sig": _signer().sign("00" * 32)}], [signer.public_key]) == frozenset()


def test_a_restarted_broker_refuses_a_log_cut_or_rewritten_after_its_head_was_published(tmp_path):
    """The ledger publishes heads; at start it finds the last one of its replica in the log, or refuses it:
    lines cut off, the log rewritten without signatures (so it looks like an old one), or replaced by a new one."""
    import asyncio

    from ppml.broker.heads import open_sink
    from ppml.broker.ledger import RefusalBudget, open_ledger
    from ppml.broker.nonces import MemoryUsedNonces

    signer, path = _signer(), tmp_path / "a.jsonl"

    async def run_broker(entries: int) -> None:
        ledger = await open_ledger(str(path), signer, MemoryUsedNonces(1 << 20), RefusalBudget(10, 10),
                                   sink=open_sink(f"file:{tmp_path / 'heads.jsonl'}", where="t"), replica="r0",
                                   interval=60)
        for i in range(entries):
            await ledger.append([{"event": "release", "decision": "allow", "key": f"local:k{i}"}])
        await ledger.stop()

    asyncio.run(run_broker(3))
    asyncio.run(run_broker(1))  # the log holds the published head: it continues
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    starts = [e for e in entries if e["event"] == "start"]
    assert starts[1]["previous_head"] == {"seq": starts[1]["seq"] - 1, "hash": starts[1]["prev"]}
    assert starts[1]["published_head"]["hash"] == starts[1]["prev"]  # the stop entry, published at stop
    good = path.read_text()
    attacks = {
        "cut": lambda lines: lines[:-3],
        "stripped": lambda lines: [json.dumps({k: v for k, v in json.loads(x).items() if k != "sig"}, sort_keys=True,
                                              separators=(",", ":")) for x in recompute_chain(
            lines, lambda e: e.get("decision") != "allow")],
        "replaced": lambda lines: [],
    }
    for name, attack in attacks.items():
        path.write_text("".join(line + "\n" for line in attack(good.splitlines())))
        with pytest.raises(IntegrityError, match="not in the log|is not the log replica r0"):
            asyncio.run(run_broker(0))
    path.write_text(good)
    asyncio.run(run_broker(0))


def test_heads_go_to_an_azure_append_blob(azurite_container):
    """On Azurite: records are appended to one append blob, which a second writer extends, never replaces."""
    import asyncio

    from ppml.broker.heads import head_record, open_sink

    signer = _signer()
    url = f"az://{azurite_container}/heads/brokers.jsonl"

    async def publish(replica: str, seq: int) -> list:
        sink = open_sink(url, where="test")
        try:
            await sink.append(head_record(signer, replica=replica, log_id="l", seq=seq, digest="ab" * 32))
            return await sink.read()
        finally:
            await sink.close()

    asyncio.run(publish("r0", 1))
    records = asyncio.run(publish("r1", 7))
    assert [(r["replica"], r["seq"]) for r in records] == [("r0", 1), ("r1", 7)]
