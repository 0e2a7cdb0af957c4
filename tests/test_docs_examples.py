"""Every Python example in README.md and docs/*.md runs as written.

The ```python blocks of each document run one after the other in one fresh interpreter, each in a namespace
of its own (as a user would paste it; one Spark JVM per document keeps this quick), in a folder holding what the
examples name: a key store (``keys/keystore.json``, its passphrase in ``keys/keystore.pass`` and in
``PPML_KEYSTORE_PASSWORD``), a data-key file ``dk.json``, ``plain/orders.csv`` and its encrypted forms
``enc/orders.csv.ppml`` and ``enc/orders/``, and ``enc/lineitem.tbl.ppml``. Examples of docs/azure.md run
against Azurite (``AZURE_STORAGE_CONNECTION_STRING``, container ``data``); those of docs/broker.md against a
running key broker that accepts simulated evidence, with no key store passphrase in their environment, so
their keys can only come from the broker. A block that fails, or names something that does not exist,
fails its test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyspark")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PASSPHRASE = "docs example passphrase"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
ORDERS = "id,total\n" + "".join(f"{i},{i * 1.5:.2f}\n" for i in range(1, 201))


def _examples() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for document in DOCUMENTS:
        blocks = [m.group(1) for m in BLOCK.finditer(document.read_text(encoding="utf-8"))]
        if blocks:
            found[document.relative_to(ROOT).as_posix()] = blocks
    return found


EXAMPLES = _examples()
# Runs each block in its own namespace and names the one that fails.
RUNNER = r"""
import sys, traceback
for index, code in enumerate(BLOCKS, 1):
    try:
        exec(compile(code, f"{DOCUMENT} example {index}", "exec"), {"__name__": "__main__"})
    except BaseException:
        print(f"{DOCUMENT} example {index} failed:", code, sep="\n", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def test_the_documents_have_python_examples():
    assert set(EXAMPLES) >= {"README.md", "docs/spark.md", "docs/azure.md", "docs/broker.md"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from keystores import make_data_key, make_keystore

    from ppml.crypto.formats import DEFAULT_FORMAT
    from ppml.io import files

    root = tmp_path_factory.mktemp("docs")
    store = make_keystore(root / "keys" / "keystore.json", PASSPHRASE, "default", "tpch",
                          passphrase_file=root / "keys" / "keystore.pass")
    key, wrapped = make_data_key(store, "tpch", root / "dk.json")  # "tpch": the key the broker's policy releases
    arguments = {"key": key, "envelope": (wrapped,), "mode": DEFAULT_FORMAT}
    (root / "plain").mkdir()
    (root / "plain" / "orders.csv").write_text(ORDERS)
    files.encrypt(str(root / "plain" / "orders.csv"), str(root / "enc" / "orders.csv.ppml"), **arguments)
    lines = ORDERS.splitlines(keepends=True)
    for part, rows in enumerate((lines[1:101], lines[101:])):
        source = root / f"part-{part}.csv"
        source.write_text(lines[0] + "".join(rows))
        files.encrypt(str(source), str(root / "enc" / "orders" / f"part-{part}.csv.ppml"), **arguments)
        source.unlink()
    lineitem = root / "lineitem.tbl"
    lineitem.write_text("".join(f"{i}|{i % 50 + 1}.0|{'NRA'[i % 3]}|1996-03-{i % 28 + 1:02d}|\n" for i in range(1, 301)))
    files.encrypt(str(lineitem), str(root / "enc" / "lineitem.tbl.ppml"), **arguments)
    lineitem.unlink()
    return root


def _environment(workspace: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PPML_", "AZURE_"))}
    env.update(PPML_KEYSTORE=str(workspace / "keys" / "keystore.json"), PPML_KEYSTORE_PASSWORD=PASSPHRASE,
               PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", HOME=str(workspace))
    return env


@pytest.fixture(scope="module")
def broker_environment(workspace, tmp_path_factory) -> dict[str, str]:
    from broker_harness import SIMULATED_POLICY, BrokerProcess

    kms = [{"backend": "local", "keystore": str(workspace / "keys" / "keystore.json"),
            "passphrase": f"file:{workspace / 'keys' / 'keystore.pass'}"}]
    with BrokerProcess(tmp_path_factory.mktemp("docs-broker"), kms=kms, policies=[SIMULATED_POLICY]) as broker:
        env = _environment(workspace)
        del env["PPML_KEYSTORE_PASSWORD"]  # the examples' keys must come from the broker
        env.update(PPML_BROKER_URL=broker.url, PPML_BROKER_CA=str(broker.pki.ca_path), PPML_BROKER_ATTESTER="simulated",
                   PPML_BROKER_ATTESTER_SETTINGS='{"claims": {"app": "tpch"}}')
        yield env


@pytest.fixture(scope="module")
def azure_environment(workspace, azurite_connection_string) -> dict[str, str]:
    import adlfs

    adlfs.AzureBlobFileSystem(connection_string=azurite_connection_string, skip_instance_cache=True).mkdir("data")
    return {**_environment(workspace), "AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string}


@pytest.mark.parametrize("document", sorted(EXAMPLES))
def test_examples_run_as_written(document, workspace, request):
    if document == "docs/broker.md":
        env = request.getfixturevalue("broker_environment")
    elif document == "docs/azure.md":
        env = request.getfixturevalue("azure_environment")
    else:
        env = _environment(workspace)
    program = f"DOCUMENT = {document!r}\nBLOCKS = {EXAMPLES[document]!r}\n{RUNNER}"
    result = subprocess.run([sys.executable, "-c", program], cwd=workspace, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]
