"""The ``ppml`` command end to end, as subprocesses of the installed entry point.

Every invocation is checked for the invariants that hold whatever the command: no traceback, and no
passphrase or key material in stdout or stderr.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from keystores import make_keystore

from ppml.io import files
from ppml.keys.keyring import KeyRing, clear_cache
from ppml.keys.local import LocalKms

PPML = Path(sys.executable).parent / "ppml"
if not PPML.exists():  # pragma: no cover - a non-venv layout
    PPML = Path(shutil.which("ppml") or "ppml")
PASSPHRASE = "Tr0ub4dor-ppml-test-passphrase-93d1"
SCHEMA = "ppml.cli/1"
PLAIN = {"x.csv": b"id,amount\n1,10.5\n2,20.25\n", "sub/y.csv": b"k,v\n" + b"a,1\n" * 2000}


def tree_bytes(root: Path) -> dict[str, bytes]:
    """The data files of a tree (its data-set manifests left out)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "_ppml_manifest" not in p.parts}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Cli:
    """Runs ``ppml`` in a sandbox: its own HOME, key store and passphrase; stdin never a terminal."""

    def __init__(self, root: Path, *, keystore: bool = True) -> None:
        self.root = root
        (root / "home").mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PPML_", "XDG_"))}
        self.env.update({"HOME": str(root / "home"), "PPML_KEYSTORE_PASSWORD": PASSPHRASE, "NO_COLOR": "1"})
        if keystore:
            self.env["PPML_KEYSTORE"] = str(root / "ks.json")
        self.secrets = [PASSPHRASE]

    def fast_keystore(self) -> None:
        """Create ``ks.json`` in-process with cheap Argon2id settings (``keys init`` is tested on its own)."""
        make_keystore(self.root / "ks.json", PASSPHRASE, "default")

    def _environment(self, overrides: dict[str, str | None] | None) -> dict[str, str]:
        env = dict(self.env)
        for name, value in (overrides or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def _check(self, proc: subprocess.CompletedProcess, secrets: list[str]) -> subprocess.CompletedProcess:
        text = proc.stdout + proc.stderr
        assert "Traceback" not in text, proc.stderr
        for secret in self.secrets + secrets:
            assert secret not in text, f"a secret was printed by {proc.args}"
        return proc

    def run(self, *args, env: dict[str, str | None] | None = None, secrets: tuple[str, ...] = ()):
        proc = subprocess.run([str(PPML), *map(str, args)], env=self._environment(env), cwd=self.root,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        return self._check(proc, list(secrets))

    def run_many(self, *calls: tuple) -> list:
        """Independent invocations started together (start-up time dominates, so this halves the wait).

        Each call is a tuple of arguments, optionally ending with a dict of environment overrides.
        """
        procs = []
        for call in calls:
            env = call[-1] if call and isinstance(call[-1], dict) else None
            args = call[:-1] if env is not None else call
            procs.append(subprocess.Popen([str(PPML), *map(str, args)], env=self._environment(env), cwd=self.root,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=120)
            results.append(self._check(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), []))
        return results

    def learn_data_key(self, data_key_file: Path, keystore: Path | None = None) -> tuple:
        """Unwrap a data-key file in this process, and remember its material as a secret never to print."""
        clear_cache()
        kms = LocalKms(keystore or self.root / "ks.json", PASSPHRASE)
        record, key = KeyRing([kms]).open_data_key_file(str(data_key_file))
        material = key.unsafe_material()
        self.secrets += [material.hex(), base64.b64encode(material).decode()]
        return record, key


def doc_of(proc: subprocess.CompletedProcess, kind: str) -> dict:
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == SCHEMA and doc["kind"] == kind
    return doc


def write_plain(root: Path) -> Path:
    for relative, data in {**PLAIN, ".hidden": b"skip me"}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def cli_ws(tmp_path_factory):
    """A CLI sandbox with a key store, ``dk.json``, plaintext in ``plain/`` and (made in-process) ``enc/``."""
    cli = Cli(tmp_path_factory.mktemp("cli"))
    cli.fast_keystore()
    assert cli.run("keys", "data-key", "--out", "dk.json").returncode == 0
    write_plain(cli.root / "plain")
    record, key = cli.learn_data_key(cli.root / "dk.json")
    files.encrypt(str(cli.root / "plain"), str(cli.root / "enc"), key=key, envelope=record.envelope)
    clear_cache()
    return cli


# -- keys --------------------------------------------------------------------------------------------


def test_init_and_data_key_use_the_default_key_store_under_home(tmp_path):
    cli = Cli(tmp_path, keystore=False)
    init = cli.run("keys", "init")
    assert init.returncode == 0, init.stderr
    made = cli.run("keys", "data-key", "--out", "dk.json", "--json")
    doc = doc_of(made, "keys.data-key")
    assert [w["version"] for w in doc["envelope"]] == ["1"]

    keystore = tmp_path / "home" / ".config" / "ppml" / "keystore.json"
    assert keystore.is_file() and mode_of(keystore) == 0o600
    assert mode_of(tmp_path / "dk.json") == 0o600
    assert json.loads((tmp_path / "dk.json").read_text())["key_id"] == doc["key_id"]
    cli.learn_data_key(tmp_path / "dk.json", keystore)
    assert str(keystore) in init.stderr

    # key files that others can read are refused, with the chmod that fixes them
    shutil.copy(tmp_path / "dk.json", tmp_path / "dk-open.json")
    os.chmod(tmp_path / "dk-open.json", 0o644)
    (tmp_path / "x.csv").write_bytes(PLAIN["x.csv"])
    loose_key = cli.run("encrypt", "x.csv", "x.csv.ppml", "--data-key", "dk-open.json")
    assert loose_key.returncode == 7
    assert "hint:" in loose_key.stderr and "chmod 600" in loose_key.stderr
    assert not (tmp_path / "x.csv.ppml").exists()

    os.chmod(keystore, 0o644)
    loose_store = cli.run("keys", "data-key", "--out", "dk2.json")
    assert loose_store.returncode == 7 and "chmod 600" in loose_store.stderr
    assert not (tmp_path / "dk2.json").exists()


# -- data verbs --------------------------------------------------------------------------------------


def test_file_encrypt_inspect_verify_decrypt_json(cli_ws):
    cli = cli_ws
    enc = doc_of(cli.run("encrypt", "plain/x.csv", "one/x.csv.ppml", "--data-key", "dk.json", "--json"),
                 "encrypt")
    assert enc["files"] == 1 and enc["bytes"] == len(PLAIN["x.csv"])
    assert (cli.root / "one" / "x.csv.ppml").read_bytes()[:4] == b"PPML"

    # inspect reads the header only: no passphrase, no key store at all
    info = doc_of(cli.run("inspect", "one/x.csv.ppml", "--json",
                          env={"PPML_KEYSTORE_PASSWORD": None, "PPML_KEYSTORE": str(cli.root / "nowhere.json")}),
                  "inspect")
    assert info["format"] == "aes_gcm_stream"
    assert [w["reference"] for w in info["wrapped_by"]] == ["local:default#v1"]

    checked = doc_of(cli.run("verify", "one/x.csv.ppml", "--json"), "verify")
    assert checked["ok"] is True and checked["files"] == 1
    dec = doc_of(cli.run("decrypt", "one/x.csv.ppml", "one/x.csv", "--json"), "decrypt")
    assert dec["files"] == 1
    assert (cli.root / "one" / "x.csv").read_bytes() == PLAIN["x.csv"]


def test_folder_encrypt_verify_decrypt_json(cli_ws):
    cli = cli_ws
    enc = doc_of(cli.run("encrypt", "plain", "tree", "--data-key", "dk.json", "--workers", "2", "--json"),
                 "encrypt")
    assert enc["files"] == len(PLAIN)
    assert sorted(tree_bytes(cli.root / "tree")) == sorted(f"{rel}.ppml" for rel in PLAIN)

    checked = doc_of(cli.run("verify", "tree", "--json"), "verify")
    assert checked["ok"] is True and all(d["ok"] for d in checked["details"]) and checked["files"] == len(PLAIN)
    assert checked["dataset"]["version"] == 1 and checked["dataset"]["members"] == len(PLAIN)
    doc_of(cli.run("decrypt", "tree", "tree-plain", "--json"), "decrypt")
    assert tree_bytes(cli.root / "tree-plain") == PLAIN


def test_errors_have_exit_codes_and_one_clean_message(cli_ws):
    cli = cli_ws
    root = cli.root
    corrupt = bytearray((root / "enc" / "x.csv.ppml").read_bytes())
    corrupt[4] = 99  # format version
    (root / "corrupt.ppml").write_bytes(bytes(corrupt))
    shutil.copytree(root / "enc", root / "tampered")
    victim = root / "tampered" / "sub" / "y.csv.ppml"
    body = bytearray(victim.read_bytes())
    body[-20] ^= 1
    victim.write_bytes(bytes(body))
    (root / "existing.ppml").write_bytes(b"keep me")
    literal = base64.b64encode(b"0123456789abcdef").decode()
    cli.secrets.append(literal)

    wrong_pass, missing_key, bad_header, bad_body, exists, bad_mode, literal_secret = cli.run_many(
        ("decrypt", "enc/x.csv.ppml", "out-wrong.csv", {"PPML_KEYSTORE_PASSWORD": "not-the-passphrase"}),
        ("encrypt", "plain/x.csv", "out-missing.ppml", "--data-key", "missing.json"),
        ("decrypt", "corrupt.ppml", "out-corrupt.csv"),
        ("verify", "tampered"),
        ("encrypt", "plain/x.csv", "existing.ppml", "--data-key", "dk.json"),
        ("encrypt", "plain/x.csv", "out-mode.ppml", "--data-key", "dk.json", "--mode", "rot13"),
        ("decrypt", "enc/x.csv.ppml", "out-literal.csv", "--bigdl-kms", "plaintext", "--bigdl-key", literal),
    )

    assert (wrong_pass.returncode, missing_key.returncode, bad_header.returncode) == (5, 3, 4)
    assert (bad_body.returncode, exists.returncode, bad_mode.returncode, literal_secret.returncode) == (4, 6, 2, 2)
    assert "wrong passphrase" in wrong_pass.stderr
    assert "missing.json" in missing_key.stderr
    assert str(victim) in bad_body.stderr and "segment 0" in bad_body.stderr
    assert "1 of 2" in bad_body.stderr
    assert "rot13" in bad_mode.stderr
    assert "env:" in literal_secret.stderr
    for proc in (wrong_pass, missing_key, bad_header, exists, bad_mode, literal_secret):
        assert proc.stderr.count("error:") == 1, proc.stderr
        assert proc.stdout == ""
    assert (root / "existing.ppml").read_bytes() == b"keep me"
    assert not [p for p in root.iterdir() if p.name.startswith("out-")]


def test_rotate_rewrap_retire_rekey(tmp_path):
    cli = Cli(tmp_path)
    cli.fast_keystore()
    assert cli.run("keys", "data-key", "--out", "dk.json").returncode == 0
    _, old_key = cli.learn_data_key(tmp_path / "dk.json")
    write_plain(tmp_path / "plain")
    doc_of(cli.run("encrypt", "plain", "tree/enc", "--data-key", "dk.json", "--json"), "encrypt")
    (tmp_path / "tree" / "keys").mkdir()
    shutil.copy2(tmp_path / "dk.json", tmp_path / "tree" / "keys" / "dk.json")  # a data-key file in the tree

    rotated = doc_of(cli.run("keys", "rotate", "--json"), "keys.rotate")
    assert rotated["key"]["current_version"] == "2"

    refused = cli.run("keys", "retire", "1", "--scan", "tree", "--confirm", "default")
    assert refused.returncode == 7 and "local:default#v1" in refused.stderr

    rewrapped = doc_of(cli.run("rewrap", "tree", "--json"), "rewrap")
    # the data files, the data-key file and the data set's manifest
    assert rewrapped["usage"] == {"local:default#v2": len(PLAIN) + 2}
    assert {d["status"] for d in rewrapped["details"]} == {"rewrapped"}
    assert mode_of(tmp_path / "tree" / "keys" / "dk.json") == 0o600

    retired = doc_of(cli.run("keys", "retire", "1", "--scan", "tree", "--confirm", "default", "--json"),
                     "keys.retire")
    assert retired["retired"] == "local:default#v1"

    rekeyed = doc_of(cli.run("rekey", "tree", "--out-data-key", "dk2.json", "--json"), "rekey")
    assert rekeyed["files"] == len(PLAIN) and mode_of(tmp_path / "dk2.json") == 0o600
    _, new_key = cli.learn_data_key(tmp_path / "dk2.json")
    assert new_key.key_id == rekeyed["key_id"] != old_key.key_id

    old, decrypted = cli.run_many(
        ("decrypt", "tree/enc/x.csv.ppml", "old.csv", "--data-key", "tree/keys/dk.json"),
        ("decrypt", "tree/enc", "dec", "--data-key", "dk2.json", "--json"),
    )
    assert old.returncode == 5 and "not the key" in old.stderr  # the old data key no longer opens them
    assert doc_of(decrypted, "decrypt")["files"] == len(PLAIN)
    assert tree_bytes(tmp_path / "dec") == PLAIN


# -- help and demo -----------------------------------------------------------------------------------

COMMANDS = [("keys", "init"), ("keys", "data-key"), ("keys", "rotate"), ("keys", "list"), ("keys", "inspect"),
            ("keys", "retire"), ("encrypt",), ("decrypt",), ("inspect",), ("verify",), ("rewrap",), ("rekey",),
            ("demo",), ("submit",), ("deploy", "render"), ("deploy", "azure")]


def test_every_command_help_has_examples(tmp_path):
    cli = Cli(tmp_path)
    results = cli.run_many(*[(*command, "--help") for command in COMMANDS])
    for command, proc in zip(COMMANDS, results):
        assert proc.returncode == 0, (command, proc.stderr)
        assert "Example" in proc.stdout, command


def test_demo_runs_twice(tmp_path):
    cli = Cli(tmp_path, keystore=False)
    no_env = {"PPML_KEYSTORE_PASSWORD": None}
    first = doc_of(cli.run("demo", "--dir", "D", "--rows", "2000", "--json", env=no_env), "demo")
    assert first["ok"] is True
    demo_passphrase = (tmp_path / "D" / "keystore.pass").read_text().strip()
    assert mode_of(tmp_path / "D" / "keystore.pass") == 0o600
    assert demo_passphrase not in json.dumps(first)
    cli.secrets.append(demo_passphrase)

    second = doc_of(cli.run("demo", "--dir", "D", "--rows", "2000", "--json", env=no_env), "demo")
    assert second["ok"] is True
    assert any("Reusing the key store" in s["step"] for s in second["steps"])


def test_standard_input_and_output_streams(cli_ws):
    """`-` encrypts from a pipe and decrypts to one; a damaged stream fails with exit 4 after what was
    authentic, and --json never mixes with plaintext on standard output."""
    import subprocess
    import sys

    ppml = [sys.executable, "-m", "ppml.cli.main"]
    env = cli_ws.env
    data = b"".join(b"%d,row\n" % i for i in range(300_000))
    enc = cli_ws.root / "piped.ppml"
    done = subprocess.run([*ppml, "encrypt", "-", str(enc), "--data-key", str(cli_ws.root / "dk.json")], input=data,
                          env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    out = subprocess.run([*ppml, "decrypt", str(enc), "-"], env=env, capture_output=True)
    assert out.returncode == 0 and out.stdout == data and b"Decrypted 1 file" in out.stderr
    truncated = cli_ws.root / "truncated.ppml"
    truncated.write_bytes(enc.read_bytes()[: 2 * 1024 * 1024])
    cut = subprocess.run([*ppml, "decrypt", str(truncated), "-"], env=env, capture_output=True)
    assert cut.returncode == 4 and data.startswith(cut.stdout)
    altered = bytearray(enc.read_bytes())
    altered[-100] ^= 1  # inside the third (last) of three segments
    damaged = cli_ws.root / "damaged.ppml"
    damaged.write_bytes(bytes(altered))
    bad = subprocess.run([*ppml, "decrypt", str(damaged), "-"], env=env, capture_output=True)
    assert bad.returncode == 4 and b"failed authentication" in bad.stderr
    assert 0 < len(bad.stdout) < len(data) and data.startswith(bad.stdout)  # only authentic segments got out
    mixed = subprocess.run([*ppml, "decrypt", str(enc), "-", "--json"], env=env, capture_output=True)
    assert mixed.returncode == 2 and mixed.stdout == b""
    # Standard input cannot carry both the data and a secret; '-' is never a file name here.
    both = subprocess.run([*ppml, "encrypt", "-", str(cli_ws.root / "x.ppml"), "--data-key", str(cli_ws.root / "dk.json"),
                           "--passphrase-file", "-"], input=b"pass\n" + data, env=env, capture_output=True)
    assert both.returncode == 2 and b"cannot read it too" in both.stderr and not (cli_ws.root / "x.ppml").exists()
    for args in (["encrypt", "-", "-", "--data-key", str(cli_ws.root / "dk.json")], ["decrypt", "-", "out.txt"]):
        refused = subprocess.run([*ppml, *args], input=data, env=env, capture_output=True, cwd=cli_ws.root)
        assert refused.returncode == 2 and not (cli_ws.root / "-").exists(), refused.stderr


def _command_paths() -> list[tuple[str, ...]]:
    import typer

    from ppml.cli.main import app

    paths = []

    def walk(command, prefix: tuple[str, ...]) -> None:
        children = getattr(command, "commands", None)
        if not children:
            paths.append(prefix)
        for name, child in (children or {}).items():
            walk(child, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return paths


def test_every_help_is_whole_in_80_columns():
    """No option name, metavar or line is cut in an 80-column terminal (rich marks cuts with an ellipsis)."""
    from typer.testing import CliRunner

    from ppml.cli.main import app

    paths = _command_paths()
    assert len(paths) > 25
    for path in [(), *paths]:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80", "NO_COLOR": "1"})
        assert result.exit_code == 0, (path, result.output)
        assert "…" not in result.output, (path, result.output)
        assert max(map(len, result.output.splitlines())) <= 80, path


def test_integrity_failures_exit_4_on_every_verb(cli_ws):
    """Exit codes come from the error classes: a damaged file is an integrity failure (4) whatever the verb."""
    cli = cli_ws
    shutil.copytree(cli.root / "enc", cli.root / "damaged")
    victim = cli.root / "damaged" / "x.csv.ppml"
    body = bytearray(victim.read_bytes())
    body[-1] ^= 1
    victim.write_bytes(bytes(body))
    header = bytearray(victim.read_bytes())
    header[0] ^= 1  # no PPML magic: a file named like an encrypted one that is not
    (cli.root / "damaged-header.csv.ppml").write_bytes(bytes(header))
    decrypt, verify, rekey, inspect = cli.run_many(
        ("decrypt", "damaged", "out-damaged"),
        ("verify", "damaged"),
        ("rekey", "damaged", "--out-data-key", "dk-damaged.json"),
        ("inspect", "damaged-header.csv.ppml"),
    )
    for proc in (decrypt, verify, rekey, inspect):
        assert proc.returncode == 4, (proc.args, proc.stderr)
    assert "x.csv.ppml" in rekey.stderr and "segment" in rekey.stderr
    assert not (cli.root / "out-damaged").exists()


def test_format_names_are_not_literals_outside_the_format_modules():
    """Callers ask a format what it can do instead of testing its name (constants name the defaults)."""
    import ast

    from ppml.crypto.formats import _FORMATS, available_formats

    source = Path(__file__).resolve().parents[1] / "src" / "ppml"
    names = {n.lower() for n in available_formats()} | {"aes_cbc_pkcs5padding"}  # "plaintext" is also a word
    allowed = {"crypto/formats.py", "crypto/gcm_stream_format.py", "crypto/bigdl_cbc_format.py", "crypto/plain_format.py"}
    found = []
    for path in sorted(source.rglob("*.py")):
        relative = path.relative_to(source).as_posix()
        if relative in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in names:
                found.append(f"{relative}:{node.lineno}: {node.value!r}")
    assert _FORMATS.names() and not found, found
