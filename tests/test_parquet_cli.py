"""Encrypted Parquet on the command line, in process (``ppml.cli.main.main``): ``ppml parquet encrypt`` from
CSV and JSON with column keys, ``inspect`` (key ids, never a secret), ``verify``, ``decrypt``, ``rewrap`` and
``rekey``; and the bad inputs: a changed page, a truncated file, a missing column key, plaintext Parquet
where encrypted is expected, each a clear error naming the file (and column), exit code 4 for integrity
failures, no partial output."""

from __future__ import annotations

import json
import os

import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from ppml.cli.main import main  # noqa: E402
from ppml.keys.keyring import clear_cache  # noqa: E402

PASSPHRASE = "cli parquet passphrase"
ROWS = 400
CSV = "id,name,phone,amount\n" + "".join(f"{i},n{i},555-{i:04d},{i * 0.5}\n" for i in range(ROWS))


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``cli(*args)`` runs ppml in this process against a key store with master keys tpch and pii; returns
    ``(exit code, stdout, stderr)``."""
    from keystores import make_keystore

    clear_cache()
    make_keystore(tmp_path / "ks.json", PASSPHRASE, "tpch", "pii")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PPML_KEYSTORE", str(tmp_path / "ks.json"))
    monkeypatch.setenv("PPML_KEYSTORE_PASSWORD", PASSPHRASE)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert PASSPHRASE not in out + err
        return code, out, err

    yield run
    clear_cache()


def _json(result) -> dict:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


def test_convert_inspect_verify_decrypt(cli, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text(CSV)
    (tmp_path / "in" / "b.json").write_text("".join(json.dumps({"id": i, "phone": f"9-{i}"}) + "\n" for i in range(5)))
    report = _json(cli("parquet", "encrypt", "in", "enc", "--footer-key", "tpch", "--column-key", "pii:phone",
                       "--json"))
    assert report["files"] == 2 and {"a.parquet", "b.parquet"} <= set(os.listdir("enc"))
    inspected = _json(cli("inspect", "enc/a.parquet", "--json"))
    columns = {c["column"]: c for c in inspected["columns"]}
    assert inspected["format"] == "parquet" and inspected["algorithm"] == "AES_GCM_V1"
    assert columns["phone"]["master_key"] == "pii" and columns["name"]["master_key"] == "tpch"
    assert columns["phone"]["wrapped_by"] == ["local:pii#v1"]
    text = json.dumps(inspected)
    assert "wrappedDEK" not in text and "wrappedKEK" not in text  # key ids only, no key material
    human = cli("inspect", "enc/a.parquet")
    assert human[0] == 0 and "column key pii" in human[2]
    verified = _json(cli("verify", "enc", "--json"))
    assert all(d["ok"] for d in verified["details"]) and verified["dataset"]["version"] == 1
    assert _json(cli("decrypt", "enc", "plain", "--json"))["files"] == 2
    back = pq.read_table("plain/a.parquet")
    assert back.column("phone").to_pylist() == [f"555-{i:04d}" for i in range(ROWS)]
    assert pq.read_table("plain/b.parquet").num_rows == 5
    # and one file to one file, with the plaintext-footer and CTR options
    code, _, err = cli("parquet", "encrypt", "in/a.csv", "ctr.parquet", "--footer-key", "tpch", "--algorithm",
                       "AES_GCM_CTR_V1", "--plaintext-footer")
    assert code == 0 and "AES_GCM_CTR_V1" in err  # the insecure choice is loud
    assert _json(cli("inspect", "ctr.parquet", "--json"))["footer"] == "plaintext, signed"


def test_bad_inputs_exit_4_naming_the_file_with_no_partial_output(cli, tmp_path):
    (tmp_path / "a.csv").write_text(CSV)
    assert cli("parquet", "encrypt", "a.csv", "t.parquet", "--footer-key", "tpch", "--column-key", "pii:phone")[0] == 0
    good = (tmp_path / "t.parquet").read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 3] ^= 0x04  # inside a column chunk
    (tmp_path / "bad.parquet").write_bytes(bytes(bad))
    (tmp_path / "short.parquet").write_bytes(good[:-64])
    for name in ("bad.parquet", "short.parquet"):
        code, _, err = cli("verify", name)
        assert code == 4 and name in err, (name, err)
        code, _, err = cli("decrypt", name, f"out-{name}")
        assert code == 4 and name in err and not os.path.exists(f"out-{name}"), name
    pq.write_table(pa.table({"id": [1, 2]}), "plain.parquet")
    code, _, err = cli("decrypt", "plain.parquet", "x.parquet", "--mode", "parquet")
    assert code == 4 and "plain.parquet" in err and "plaintext" in err and not os.path.exists("x.parquet")


def test_a_missing_column_key_names_the_column_and_key(cli, tmp_path):
    (tmp_path / "a.csv").write_text(CSV)
    assert cli("parquet", "encrypt", "a.csv", "t.parquet", "--footer-key", "tpch", "--column-key", "pii:phone")[0] == 0
    document = json.loads((tmp_path / "ks.json").read_text())
    document["keys"].pop("pii")
    (tmp_path / "partial.json").write_text(json.dumps(document))
    (tmp_path / "partial.json").chmod(0o600)
    clear_cache()
    code, _, err = cli("decrypt", "t.parquet", "out.parquet", "--keystore", "partial.json")
    assert code != 0 and "'phone'" in err and "'pii'" in err and "t.parquet" in err
    assert not os.path.exists("out.parquet")
    inspected = _json(cli("inspect", "t.parquet", "--keystore", "partial.json", "--json"))
    readable = {c["column"]: c["readable"] for c in inspected["columns"]}
    assert readable["phone"] is False and readable["id"] is True


@pytest.mark.parametrize("external", [False, True])
def test_rewrap_and_rekey(cli, tmp_path, external):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text(CSV)
    extra = ["--external-key-material", "--plaintext-footer"] if external else []
    assert cli("parquet", "encrypt", "in", "ds", "--footer-key", "tpch", "--column-key", "pii:phone", *extra)[0] == 0
    before = (tmp_path / "ds" / "a.parquet").read_bytes()
    assert cli("keys", "rotate", "--key-name", "tpch")[0] == 0
    report = _json(cli("rewrap", "ds", "--key-name", "tpch", "--json"))
    entry = next(d for d in report["details"] if d["path"].endswith("a.parquet"))
    assert entry["status"] == "rewrapped" and "local:tpch#v2" in entry["keys"]
    after = (tmp_path / "ds" / "a.parquet").read_bytes()
    assert (after == before) == external  # external key material: the file itself is untouched
    columns = {c["column"]: c for c in _json(cli("inspect", "ds/a.parquet", "--json"))["columns"]}
    assert columns["id"]["wrapped_by"] == ["local:tpch#v2"] and columns["phone"]["wrapped_by"] == ["local:pii#v1"]
    report = _json(cli("rekey", "ds", "--out-data-key", "dk2.json", "--key-name", "tpch", "--json"))
    assert any(d.get("status") == "rekeyed" for d in report["details"]), report
    assert (tmp_path / "ds" / "a.parquet").read_bytes() != after
    assert all(d["ok"] for d in _json(cli("verify", "ds", "--json"))["details"])
    assert _json(cli("decrypt", "ds", "plain", "--json"))["files"] == 1
    assert pq.read_table("plain/a.parquet").num_rows == ROWS
