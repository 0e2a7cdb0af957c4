"""The audit log's hash chain detects any edited, dropped, inserted or reordered entry (and a cut end, given the head)."""

from __future__ import annotations

import json
import os
import stat

import pytest
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
