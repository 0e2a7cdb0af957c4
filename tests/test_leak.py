"""Leak check: a canary planted in the plaintext must never appear outside the encrypted outputs.

The canary goes into every customer comment, which Q10 carries through joins and shuffles into its
result. After all 22 queries run on the encrypted tables with encrypted results (and the answers are
checked), every file the run wrote -- Spark local dirs, temporary files, logs, event logs, the output
folder, the home folder -- is searched for the canary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

pytest.importorskip("pyspark")

pytestmark = [pytest.mark.xdist_group("cluster"), pytest.mark.slow]

PPML = str(Path(sys.executable).with_name("ppml"))


def _plant(plain: Path, canary: str) -> None:
    lines = (plain / "customer.tbl").read_text().splitlines(keepends=True)
    planted = []
    for line in lines:
        fields = line.split("|")
        fields[7] = f"{canary} {fields[7]}"  # c_comment
        planted.append("|".join(fields))
    (plain / "customer.tbl").write_text("".join(planted))


class _Watcher(threading.Thread):
    """Searches a folder for the canary every half second while the job runs.

    Spark deletes its local folders (shuffle and spill files) when it stops, so looking only afterwards
    would miss them.
    """

    def __init__(self, root: Path, needle: bytes, encrypted_input: Path, results: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.needle, self.encrypted_input, self.results = root, needle, encrypted_input, results
        self.hits: set[str] = set()
        self.seen: set[str] = set()
        self.stop = threading.Event()

    def scan(self) -> None:
        for folder, _, names in os.walk(self.root):  # os.walk skips folders deleted while it walks
            for name in names:
                path = Path(folder) / name
                if path.is_relative_to(self.encrypted_input) or (path.is_relative_to(self.results) and "part-" in name):
                    continue  # the encrypted tables and the encrypted result parts
                try:
                    data = path.read_bytes()
                except OSError:
                    continue  # deleted while we looked
                self.seen.add(str(path))
                if self.needle in data:
                    self.hits.add(str(path))

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.scan()


def test_no_plaintext_outside_encrypted_outputs(tpch_plain, tmp_path):
    canary = f"CANARY{uuid.uuid4().hex}"
    plain = tmp_path / "plain"
    shutil.copytree(tpch_plain, plain)
    _plant(plain, canary)
    run_root = tmp_path / "run"
    dirs = {name: run_root / name for name in ("home", "tmp", "local", "events", "keys")}
    for folder in dirs.values():
        folder.mkdir(parents=True)
    env = {**os.environ, "HOME": str(dirs["home"]), "TMPDIR": str(dirs["tmp"]),
           "PPML_KEYSTORE": str(dirs["keys"] / "ks.json"), "PPML_KEYSTORE_PASSWORD": "leak-test-passphrase",
           "SPARK_LOG_DIR": str(run_root / "logs")}

    def ppml(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([PPML, *args], env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]
        return result

    outputs = [ppml("keys", "init", "--key-name", "default")]
    outputs.append(ppml("keys", "data-key", "--out", str(dirs["keys"] / "dk.json")))
    encrypted, results = run_root / "encrypted", run_root / "results"
    outputs.append(ppml("tpch", "encrypt", str(plain), str(encrypted), "--data-key", str(dirs["keys"] / "dk.json")))
    java_tmp = f"-Djava.io.tmpdir={dirs['tmp']}"
    watcher = _Watcher(run_root, canary.encode(), encrypted, results)
    watcher.start()
    try:
        outputs.append(ppml(
        "tpch", "run", str(encrypted), str(results), "aes_gcm_stream", "aes_gcm_stream", "--check",
        "--data-key", str(dirs["keys"] / "dk.json"), "--master", "local[2]", "--json",
            "--conf", f"spark.local.dir={dirs['local']}", "--conf", "spark.eventLog.enabled=true",
            "--conf", f"spark.eventLog.dir={dirs['events']}", "--conf", f"spark.driver.extraJavaOptions={java_tmp}",
            "--conf", f"spark.executor.extraJavaOptions={java_tmp}", "--conf", "spark.sql.shuffle.partitions=4",
            "--conf", "spark.sql.autoBroadcastJoinThreshold=-1"))  # force shuffles, so shuffle files are written
    finally:
        watcher.stop.set()
        watcher.join()
    watcher.scan()
    report = json.loads(outputs[-1].stdout)
    assert len(report["queries"]) == 22 and all(q["checked"] and not q["mismatches"] for q in report["queries"])

    # The canary really flowed through the job: Q10's decrypted result holds it.
    from ppml.io.files import open_decrypted
    from ppml.keys.keyring import KeyRing
    from ppml.keys.local import LocalKms

    ring = KeyRing([LocalKms(dirs["keys"] / "ks.json", "leak-test-passphrase")])
    q10_parts = sorted((results / "Q10").glob("part-*"))
    assert q10_parts
    decrypted = b""
    for part in q10_parts:
        with open_decrypted(str(part), keyring=ring) as plaintext:
            decrypted += plaintext.read()
    assert canary.encode() in decrypted
    record = json.loads(next((results / "Q10" / "_ppml_provenance").glob("v*.json")).read_text())
    assert record["query"]["label"] == "TPC-H Q10" and canary not in json.dumps(record)

    assert any(p.startswith(str(dirs["events"])) for p in watcher.seen), "no event log was written"
    assert any("shuffle" in p for p in watcher.seen), "no shuffle file was seen while the job ran"
    assert sorted(watcher.hits) == [], f"plaintext canary found in: {sorted(watcher.hits)}"
    assert all(canary not in o.stdout + o.stderr for o in outputs)
