"""Text and structures from files anyone may have written, on the command line.

A file's key envelope is not authenticated: its key names can be anything. Printed, they must neither
abort the command (rich markup such as ``[/]``) nor fake or hide lines (escape sequences, line breaks,
bidirectional overrides). Deeply nested JSON in an envelope, a data-key file or a key store must be a clean
error, and a folder ``verify`` must still report every other file.
"""

from __future__ import annotations

import struct

import pytest
from keystores import make_keystore

from ppml.cli.main import main
from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.crypto.gcm_stream import AUTHENTICATED_SIZE, ENVELOPE_OFFSET
from ppml.io import files
from ppml.keys.datakey_file import DataKeyFile

HOSTILE_NAMES = ["[/]", "a\x1b[2J\x1b[1;1Hb", "c\nwrapped by: local:trusted#v1", "\u202eevil"]


@pytest.fixture
def hostile_file(tmp_path):
    """An encrypted file whose envelope names hostile keys (made with a data key the test holds)."""
    (tmp_path / "plain.csv").write_bytes(b"a,b\n1,2\n")
    envelope = [WrappedKey("local", name, "1", b"\x01" * 60) for name in HOSTILE_NAMES]
    files.encrypt(str(tmp_path / "plain.csv"), str(tmp_path / "hostile.ppml"), key=DataKey.generate(),
                  envelope=envelope)
    return tmp_path / "hostile.ppml"


def test_inspect_prints_names_from_the_envelope_escaped(hostile_file, capsys):
    assert main(["inspect", str(hostile_file)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\x1b" not in err and "\u202e" not in err
    lines = err.splitlines()
    assert sum(line.startswith("  wrapped by:") for line in lines) == len(HOSTILE_NAMES)  # no forged line
    assert "  wrapped by: local:[/]#v1" in lines
    assert "  wrapped by: local:a\\x1b[2J\\x1b[1;1Hb#v1" in lines
    assert "  wrapped by: local:c\\nwrapped by: local:trusted#v1#v1" in lines
    assert "  wrapped by: local:\\u202eevil#v1" in lines


def test_a_key_error_naming_a_hostile_key_is_printed_escaped(hostile_file, tmp_path, capsys, monkeypatch):
    make_keystore(tmp_path / "ks.json", "cli untrusted passphrase", "default")
    monkeypatch.setenv("PPML_KEYSTORE", str(tmp_path / "ks.json"))
    monkeypatch.setenv("PPML_KEYSTORE_PASSWORD", "cli untrusted passphrase")
    code = main(["decrypt", str(hostile_file), str(tmp_path / "out.csv")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "\x1b" not in err
    assert all(line.startswith(("ppml: error:", "ppml: hint:")) for line in err.splitlines()), err


def _nested_envelope_copy(good, bad) -> None:
    """``bad``: ``good`` with its key envelope replaced by JSON nested far deeper than a parser's stack."""
    data = good.read_bytes()
    (capacity,) = struct.unpack_from(">I", data, AUTHENTICATED_SIZE)
    nested = b'{"keys": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    bad.write_bytes(data[:AUTHENTICATED_SIZE] + struct.pack(">I", len(nested)) + nested
                    + data[ENVELOPE_OFFSET + capacity:])


def test_a_deeply_nested_envelope_fails_its_file_and_verify_reports_the_others(tmp_path, tree_kms, capsys,
                                                                               monkeypatch):
    key, wrapped = tree_kms.generate_data_key("default")
    folder = tmp_path / "enc"
    folder.mkdir()
    for name in ("a", "c"):
        (tmp_path / f"{name}.csv").write_bytes(b"x,y\n1,2\n" * 100)
        files.encrypt(str(tmp_path / f"{name}.csv"), str(folder / f"{name}.ppml"), key=key, envelope=[wrapped])
    _nested_envelope_copy(folder / "a.ppml", folder / "b.ppml")
    monkeypatch.setenv("PPML_KEYSTORE", str(tree_kms.path))
    monkeypatch.setenv("PPML_KEYSTORE_PASSWORD", "pw-tree-passphrase")
    code = main(["verify", str(folder)])
    err = capsys.readouterr().err
    assert code == 4 and "Traceback" not in err and "RecursionError" not in err
    assert "b.ppml: not a valid aes_gcm_stream file (key envelope is not readable: nested too deeply)" in err
    assert "2 of 3 file(s) verified." in err
    assert main(["inspect", str(folder / "b.ppml")]) == 4


@pytest.mark.parametrize("text", ['{"schema": "ppml.datakey/1", "envelope": ' + "[" * 100_000, "[1, 2]", "\xff"])
def test_keys_inspect_of_a_file_that_is_not_a_key_file_is_a_clean_error(tmp_path, capsys, text):
    path = tmp_path / "dk.json"
    path.write_bytes(text.encode("latin-1"))
    path.chmod(0o600)
    assert main(["keys", "inspect", str(path)]) == 7
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is neither a data-key file nor a key store" in err


def test_a_deeply_nested_data_key_file_is_a_config_error(tmp_path):
    with pytest.raises(Exception) as info:
        DataKeyFile.parse(b'{"schema": "ppml.datakey/1", "envelope": ' + b"[" * 100_000, name="dk.json")
    assert type(info.value).__name__ == "ConfigError" and "is not a ppml data-key file" in str(info.value)


def test_deeply_nested_evidence_is_a_clean_attestation_error(tmp_path, capsys):
    evidence = tmp_path / "evidence.json"
    evidence.write_bytes(b'{"type": "sgx", "quote": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert main(["attest", "verify", str(evidence), "--type", "sgx"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RecursionError" not in err
    assert "is not valid JSON (nested too deeply)" in err


def test_ml_inspect_prints_column_names_from_the_training_data_escaped(tmp_path, capsys, monkeypatch):
    """Feature names come from the training data's header, which whoever supplied the data wrote."""
    pytest.importorskip("skops")
    from keystores import make_data_key
    from sklearn.linear_model import LogisticRegression

    from ppml.keys.settings import KeySettings
    from ppml.ml.models import save

    kms = make_keystore(tmp_path / "ks.json", "cli untrusted passphrase", "default")
    make_data_key(kms, "default", tmp_path / "dk.json")
    monkeypatch.setenv("PPML_KEYSTORE", str(tmp_path / "ks.json"))
    monkeypatch.setenv("PPML_KEYSTORE_PASSWORD", "cli untrusted passphrase")
    model = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0], [0.0, 0.5], [1.0, 0.2]], [0, 1, 0, 1])
    save(model, tmp_path / "model.ppml", data_key=tmp_path / "dk.json", features=HOSTILE_NAMES[:2],
         keys=KeySettings(keystore=str(tmp_path / "ks.json"), passphrase="env:PPML_KEYSTORE_PASSWORD"))
    assert main(["ml", "inspect", str(tmp_path / "model.ppml")]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "\x1b" not in captured.out
    assert "[/]" in captured.out and "a\\x1b[2J\\x1b[1;1Hb" in captured.out
