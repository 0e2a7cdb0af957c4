"""ppml on Azure storage URLs, against Azurite (the Blob endpoint emulator; see the conftest fixtures).

Covers every place that takes a path: the data verbs, ``ppml cp``, PPMLContext reads and writes inside
Spark, and ``ppml tpch run``; credentials from the environment and from ``env:``/``file:`` sources
(connection string, account key, SAS); and the errors for refused credentials and missing containers.
ADLS Gen2's DFS endpoint (hierarchical namespace) is not emulated by Azurite: see docs/azure.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import AZURITE_ACCOUNT, AZURITE_KEY
from keystores import make_data_key, make_keystore

from ppml.errors import ConfigError, NotFoundError, UsageError
from ppml.io import files
from ppml.io.azure import AzureStorageSettings, StorageAccessError, resolve
from ppml.io.storage import locate

pytest.importorskip("adlfs")
pytestmark = pytest.mark.xdist_group("spark")

PPML = Path(sys.executable).parent / "ppml"
PASSPHRASE = "azure-storage-test-passphrase"
MANIFESTS = "_ppml_manifest"
MARKER = b"PLAINTEXT-MARKER-7f3a9c"
PLAIN = {
    "orders.csv": b"id,item\n" + b"".join(b"%d,%s-%d\n" % (i, MARKER, i) for i in range(3000)),
    "sub/notes.txt": MARKER + b" in a nested file\n",
    "sub/deeper/big.bin": os.urandom(300_000) + MARKER,
}


def _gcm_magic() -> bytes:
    from ppml.crypto import gcm_stream

    return gcm_stream.MAGIC


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A key store with ``default``, a data key ``dk.json`` and a plaintext tree ``plain/``."""
    root = tmp_path_factory.mktemp("azure-ws")
    (root / "home").mkdir()
    kms = make_keystore(root / "ks.json", PASSPHRASE, "default")
    key, wrapped = make_data_key(kms, "default", root / "dk.json")
    for relative, data in PLAIN.items():
        (root / "plain" / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / "plain" / relative).write_bytes(data)
    return {"root": root, "kms": kms, "key": key, "wrapped": wrapped}


def _environment(ws, connection_string: str | None, env: dict | None) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PPML_", "AZURE_"))}
    environment.update({"HOME": str(ws["root"] / "home"), "PPML_KEYSTORE": str(ws["root"] / "ks.json"),
                        "PPML_KEYSTORE_PASSWORD": PASSPHRASE, "NO_COLOR": "1"})
    if connection_string:
        environment["AZURE_STORAGE_CONNECTION_STRING"] = connection_string
    environment.update(env or {})
    return environment


def _checked(proc: subprocess.CompletedProcess, secrets=()) -> subprocess.CompletedProcess:
    """Asserts no traceback and no storage key, passphrase or plaintext marker on the console."""
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, proc.stderr[-3000:]
    for secret in (AZURITE_KEY, PASSPHRASE, MARKER.decode(), *secrets):
        assert secret not in text, f"{secret[:6]}... printed by {proc.args}"
    return proc


def ppml(ws, *args, connection_string: str | None = None, env: dict | None = None, secrets=()):
    """Run the ``ppml`` entry point in a sandbox (own HOME and key store)."""
    proc = subprocess.run([str(PPML), *map(str, args)], env=_environment(ws, connection_string, env),
                          cwd=ws["root"], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    return _checked(proc, secrets)


def ppml_many(ws, *calls: tuple, connection_string: str | None = None, secrets=()):
    """Independent ``ppml`` runs started together (interpreter start-up dominates each one)."""
    procs = [subprocess.Popen([str(PPML), *map(str, args)], env=_environment(ws, connection_string, None),
                              cwd=ws["root"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for args in calls]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        results.append(_checked(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), secrets))
    return results


def doc(proc, kind):
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads(proc.stdout)
    assert document["kind"] == kind
    return document


def blob_fs(connection_string):
    import adlfs

    return adlfs.AzureBlobFileSystem(connection_string=connection_string, skip_instance_cache=True)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def abfss(container: str, path: str) -> str:
    return f"abfss://{container}@{AZURITE_ACCOUNT}.dfs.core.windows.net/{path}"


# -- URLs and credentials (no server needed) ------------------------------------------------------------------


def test_url_forms_keep_their_form_for_children(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                       "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;")
    for url in ("abfs://data/enc", "az://data/enc", abfss("data", "enc")):
        location = locate(url)
        assert location.path == "data/enc" and location.is_azure and location.container == "data"
        scheme = url.split("://")[0]
        assert location.child("a/b.ppml").url.startswith(f"{scheme}://")
        assert location.child("a/b.ppml").url == url + "/a/b.ppml"
        assert location.sibling(".enc.tmp").url == url[: -len("enc")] + ".enc.tmp"
        assert AZURITE_KEY not in repr(location)
    with pytest.raises(UsageError, match="names no container"):
        locate("abfs://")


def test_credentials_resolve_in_order_and_never_as_values(monkeypatch, tmp_path):
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                 "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    # A literal secret is refused: settings travel to Spark executors and logs.
    with pytest.raises(UsageError, match="env:VAR, file:PATH"):
        AzureStorageSettings(account_key=AZURITE_KEY)
    # Account key from the environment; the account from the abfss URL.
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY)
    options, auth = resolve(abfss("c1", "x"))
    assert f"AccountName={AZURITE_ACCOUNT}" in options["connection_string"] and auth.account == AZURITE_ACCOUNT
    assert AZURITE_KEY not in repr(auth) and "AZURE_STORAGE_ACCOUNT_KEY" in auth.method
    # ...but abfs:// names no account: the error says what to set.
    with pytest.raises(ConfigError, match="AZURE_STORAGE_ACCOUNT_NAME"):
        resolve("abfs://c1/x")
    # Explicit settings win over the environment; a file source is read by the process using it.
    sas_file = tmp_path / "sas"
    sas_file.write_text("?sv=2024-01-01&sig=abc\n")
    settings = AzureStorageSettings(account_name="acct1", sas_token=f"file:{sas_file}")
    options, auth = resolve("abfs://c1/x", settings)
    assert "SharedAccessSignature=sv=2024-01-01&sig=abc;" in options["connection_string"]
    assert "acct1" in options["connection_string"] and str(sas_file) in auth.method
    assert settings.to_options() == {"azureStorageAccount": "acct1", "azureStorageSasToken": f"file:{sas_file}"}
    # A URL for one account with a connection string for another is refused.
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=other;AccountKey=a2V5;")
    with pytest.raises(ConfigError, match="account other"):
        resolve(abfss("c1", "x"))
    # No secret anywhere: DefaultAzureCredential, with the user-assigned identity's client id.
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_KEY")
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
    options, auth = resolve(abfss("c1", "x"))
    assert type(options["credential"]).__name__ == "DefaultAzureCredential"
    assert options["account_name"] == AZURITE_ACCOUNT and "11111111-2222" in auth.method
    options, auth = resolve(abfss("c1", "x"), AzureStorageSettings(client_id="abc"))
    assert "managed identity abc" in auth.method


# -- the data verbs -------------------------------------------------------------------------------------------


def test_cli_encrypt_inspect_verify_decrypt_and_rewrap_on_blob(ws, azurite_container, azurite_connection_string):
    c, cs = azurite_container, azurite_connection_string
    root, dk = ws["root"], ws["root"] / "dk.json"
    # A tree written through the abfs:// form, a single file through the abfss:// form.
    tree_run, file_run = ppml_many(
        ws, ("encrypt", root / "plain", f"abfs://{c}/enc", "--data-key", dk, "--segment", "AES256_GCM_HKDF_4KB",
             "--json"),
        ("encrypt", root / "plain/orders.csv", abfss(c, "one/orders.csv.ppml"), "--data-key", dk, "--json"),
        connection_string=cs)
    report = doc(tree_run, "encrypt")
    assert report["files"] == 3 and report["details"][0]["target"].startswith(f"abfs://{c}/enc/")
    doc(file_run, "encrypt")
    fs = blob_fs(cs)
    stored = {p: fs.cat_file(p) for p in fs.find(c) if MANIFESTS not in p}
    assert sorted(stored) == [f"{c}/enc/orders.csv.ppml", f"{c}/enc/sub/deeper/big.bin.ppml",
                              f"{c}/enc/sub/notes.txt.ppml", f"{c}/one/orders.csv.ppml"]
    assert fs.find(f"{c}/enc/{MANIFESTS}") == [f"{c}/enc/{MANIFESTS}/v00000001.json"]  # the folder is a data set
    assert all(data.startswith(_gcm_magic()) and MARKER not in data for data in stored.values())
    # Read back through every URL form; an existing output is refused without --force.
    inspected, verified, decrypted, single, again = ppml_many(
        ws, ("inspect", abfss(c, "enc/orders.csv.ppml"), "--json"),
        ("verify", f"az://{c}/enc", "--json"),
        ("decrypt", abfss(c, "enc"), root / "dec-tree", "--json"),
        ("decrypt", f"az://{c}/one/orders.csv.ppml", root / "orders.csv", "--json"),
        ("encrypt", root / "plain/orders.csv", f"abfs://{c}/one/orders.csv.ppml", "--data-key", dk),
        connection_string=cs)
    inspected = doc(inspected, "inspect")
    assert inspected["path"] == abfss(c, "enc/orders.csv.ppml") and inspected["segment_size"] == 4096
    assert inspected["wrapped_by"][0]["reference"].startswith("local:default")
    verified = doc(verified, "verify")
    assert verified["ok"] and verified["files"] == 3
    doc(decrypted, "decrypt")
    assert tree(root / "dec-tree") == PLAIN
    doc(single, "decrypt")
    assert (root / "orders.csv").read_bytes() == PLAIN["orders.csv"]
    assert again.returncode == 6 and "already exists" in again.stderr
    # Replacing a tree with --force leaves exactly the new files.
    doc(ppml(ws, "encrypt", root / "plain/sub", f"abfs://{c}/enc", "--data-key", dk, "--force", "--json",
             connection_string=cs), "encrypt")
    assert sorted(p for p in fs.find(c) if "/enc/" in p) == [
        f"{c}/enc/{MANIFESTS}/v00000001.json", f"{c}/enc/deeper/big.bin.ppml", f"{c}/enc/notes.txt.ppml"]
    # rewrap rewrites the headers of blobs (no in-place writes on Blob: staged, then copied over).
    ws["kms"].rotate_key("default")
    rewrapped = doc(ppml(ws, "rewrap", f"abfs://{c}/enc", "--json", connection_string=cs), "rewrap")
    assert rewrapped["files"] == 3 and rewrapped["usage"] == {"local:default#v2": 3}  # the manifest too
    checked = doc(ppml(ws, "verify", f"abfs://{c}/enc", "--json", connection_string=cs), "verify")
    assert checked["ok"] and checked["dataset"]["version"] == 2
    assert not [p for p in fs.find(c, withdirs=True) if "ppml-partial" in p or "ppml-old" in p]


def test_cp_up_down_recursive_with_encrypt(ws, azurite_container, azurite_connection_string):
    c, cs = azurite_container, azurite_connection_string
    root, dk = ws["root"], ws["root"] / "dk.json"
    fs = blob_fs(cs)
    # Upload a folder, encrypting on the way; a bare container means "into it, under the source's name".
    up, into, no_r = ppml_many(
        ws, ("cp", "-r", root / "plain", f"abfs://{c}/enc", "--encrypt", "--data-key", dk, "--workers", "3", "--json"),
        ("cp", "-r", root / "plain", abfss(c, ""), "--encrypt", "--data-key", dk, "--json"),
        ("cp", root / "plain", f"abfs://{c}/x"),
        connection_string=cs)
    up = doc(up, "cp")
    assert up["files"] == 3 and up["encrypted"] and up["bytes"] == sum(map(len, PLAIN.values()))
    doc(into, "cp")
    assert no_r.returncode == 2 and "--recursive" in no_r.stderr
    blobs = {p: fs.cat_file(p) for p in fs.find(f"{c}/enc")}
    data = [b for p, b in blobs.items() if MANIFESTS not in p]
    assert len(data) == 3 and all(b.startswith(_gcm_magic()) and MARKER not in b for b in data)
    assert sorted(p.split("/", 2)[1] for p in fs.find(c)) == ["enc"] * 4 + ["plain"] * 4  # 3 files + manifest
    # Blob to blob (server-side, bytes as they are; a trailing / means "into"), then down to disk.
    server_side, exists = ppml_many(
        ws, ("cp", "-r", f"abfs://{c}/enc", f"az://{c}/copy/", "--json"),
        ("cp", "-r", root / "plain", f"abfs://{c}/enc"),
        connection_string=cs)
    doc(server_side, "cp")
    assert {p.replace("/copy/enc/", "/enc/"): fs.cat_file(p) for p in fs.find(f"{c}/copy")} == blobs
    assert exists.returncode == 6 and "already exists" in exists.stderr
    down = doc(ppml(ws, "cp", "-r", f"abfs://{c}/copy/enc", root / "down", "--json", connection_string=cs), "cp")
    assert down["files"] == 4  # the data set with its manifest
    assert {f"{c}/enc/{k}": v for k, v in tree(root / "down").items()} == blobs
    # The downloaded ciphertext decrypts; a single file uploads byte for byte.
    decrypted, single = ppml_many(
        ws, ("decrypt", root / "down", root / "down-plain", "--json"),
        ("cp", root / "down/orders.csv.ppml", f"abfs://{c}/single/o.ppml", "--json"),
        connection_string=cs)
    doc(decrypted, "decrypt")
    assert tree(root / "down-plain") == PLAIN
    doc(single, "cp")
    assert fs.cat_file(f"{c}/single/o.ppml") == blobs[f"{c}/enc/orders.csv.ppml"]


def test_refused_credentials_and_missing_containers_are_clear_errors(ws, azurite_container, azurite_connection_string):
    c, cs = azurite_container, azurite_connection_string
    root = ws["root"]
    wrong_key = "A" * 40 + AZURITE_KEY[40:]
    wrong = cs.replace(AZURITE_KEY, wrong_key)
    denied, denied_json = ppml_many(
        ws, ("decrypt", f"abfs://{c}/anything", root / "never"),
        ("verify", f"abfs://{c}/anything", "--json"),
        connection_string=wrong, secrets=(wrong_key,))
    assert denied.returncode == 5 and denied_json.returncode == 5
    assert f"abfs://{c}/anything" in denied.stderr and "refused the credentials" in denied.stderr
    assert "AZURE_STORAGE_CONNECTION_STRING" in denied.stderr
    missing_read, missing_write = ppml_many(
        ws, ("decrypt", "abfs://no-such-container/enc", root / "never"),
        ("cp", "-r", root / "plain", abfss("no-such-container", "enc"), "--encrypt", "--data-key", root / "dk.json"),
        connection_string=cs)
    assert missing_read.returncode == 3
    assert "container 'no-such-container' does not exist in storage account devstoreaccount1" in missing_read.stderr
    assert missing_write.returncode == 3 and "az storage container create" in missing_write.stderr
    assert not (root / "never").exists()
    # In-process, the same errors are ppml errors.
    with pytest.raises(NotFoundError, match="no-such-container"):
        files.verify("abfs://no-such-container/x")
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = wrong  # restored by the container fixture's monkeypatch
    with pytest.raises(StorageAccessError) as caught:
        locate(f"abfs://{c}/x").exists()
    assert wrong_key not in str(caught.value) and caught.value.exit_code == 5


def test_account_key_and_sas_sources_against_azurite(ws, azurite_container, azurite_endpoint, tmp_path, monkeypatch):
    import datetime as dt

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    c = azurite_container
    files.encrypt(str(ws["root"] / "plain"), f"abfs://{c}/enc", key=ws["key"], envelope=(ws["wrapped"],))
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    key_file = tmp_path / "storage-key"
    key_file.write_text(AZURITE_KEY)
    sas = generate_account_sas(AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(container=True, object=True),
                               AccountSasPermissions(read=True, list=True),
                               expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    monkeypatch.setenv("TEST_SAS", sas)
    for settings in (
        AzureStorageSettings(account_name=AZURITE_ACCOUNT, account_key=f"file:{key_file}", blob_endpoint=azurite_endpoint),
        AzureStorageSettings(sas_token="env:TEST_SAS", blob_endpoint=azurite_endpoint, account_name=AZURITE_ACCOUNT),
    ):
        location = locate(abfss(c, "enc/orders.csv.ppml"), azure=settings)
        with files.open_decrypted(location, key=ws["key"]) as plaintext:
            assert plaintext.read() == PLAIN["orders.csv"]
    # A read-only SAS cannot write: the error names the URL and the missing permission, not the token.
    read_only = AzureStorageSettings(sas_token="env:TEST_SAS", blob_endpoint=azurite_endpoint,
                                     account_name=AZURITE_ACCOUNT)
    target = locate(f"abfs://{c}/denied.bin", azure=read_only)
    with pytest.raises(StorageAccessError) as caught:
        with target.open("wb") as handle:
            handle.write(b"x")
    assert "abfs://" in str(caught.value) and sas not in str(caught.value)


# -- Spark and TPC-H ------------------------------------------------------------------------------------------


def test_spark_reads_and_writes_encrypted_data_on_azurite(spark_session, spark_keys, azurite_container,
                                                          azurite_connection_string, tmp_path):
    from ppml.keys.datakey_file import DataKeyFile
    from ppml.spark import PPMLContext

    c = azurite_container
    rows = [(i, f"name{i}", float(i) / 4) for i in range(20_000)]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "t1.csv").write_text("id,name,score\n" + "".join(f"{i},{n},{s}\n" for i, n, s in rows[:15_000]))
    (plain / "t2.csv").write_text("id,name,score\n" + "".join(f"{i},{n},{s}\n" for i, n, s in rows[15_000:]))
    record = DataKeyFile.load(spark_keys["data_key"])
    files.encrypt(str(plain), f"abfs://{c}/in", key=spark_keys["key"], envelope=record.envelope,
                  segment_size=64 * 1024)
    # Executors read the credential themselves from a file source (nothing secret in the Spark options).
    source = tmp_path / "connection-string"
    source.write_text(azurite_connection_string)
    source.chmod(0o600)
    ctx = PPMLContext(spark_session, data_key=spark_keys["data_key"], keys=spark_keys["settings"],
                      azure_storage=AzureStorageSettings(connection_string=f"file:{source}"))
    schema = "id INT, name STRING, score DOUBLE"
    df = ctx.read().option("header", True).schema(schema).csv(f"abfs://{c}/in")
    assert sorted(tuple(r) for r in df.collect()) == rows
    out = abfss(c, "out/report")
    ctx.write(df.filter("id % 2 = 0").repartition(3), "aes_gcm_stream").mode("overwrite").option("header", True).csv(out)
    fs = blob_fs(azurite_connection_string)
    written = fs.find(f"{c}/out/report")
    parts = [p for p in written if p.rsplit("/", 1)[-1].startswith("part-")]
    assert f"{c}/out/report/_SUCCESS" in written and len(parts) == 3
    assert not [p for p in written if "_temporary" in p]
    assert all(fs.cat_file(p).startswith(_gcm_magic()) and b"name10" not in fs.cat_file(p) for p in parts)
    back = ctx.read().option("header", True).schema(schema).csv(f"az://{c}/out/report")
    assert sorted(tuple(r) for r in back.collect()) == [r for r in rows if r[0] % 2 == 0]
    # Overwrite replaces the parts (an empty result is one header-only part).
    ctx.write(df.filter("id < 0"), "aes_gcm_stream").mode("overwrite").option("header", True).csv(out)
    after = [p for p in fs.find(f"{c}/out/report") if "/part-" in p]
    assert len(after) == 1 and not set(after) & set(parts)
    options = dict(spark_session.sparkContext.getConf().getAll())
    assert not any(AZURITE_KEY in str(v) for v in options.values())


@pytest.mark.slow
def test_tpch_run_with_abfs_input_and_output(ws, tpch_encrypted, azurite_container, azurite_connection_string):
    c, cs = azurite_container, azurite_connection_string
    env = {"PPML_KEYSTORE": str(tpch_encrypted["keystore"]),
           "PPML_KEYSTORE_PASSWORD": tpch_encrypted["password_file"].read_text()}
    doc(ppml(ws, "cp", "-r", tpch_encrypted["encrypted"], f"abfs://{c}/tpch", "--json", connection_string=cs,
             env=env), "cp")
    result = doc(ppml(ws, "tpch", "run", f"abfs://{c}/tpch", abfss(c, "results"), "aes_gcm_stream",
                      "aes_gcm_stream", "1", "6", "--data-key", tpch_encrypted["data_key"], "--scale", "0.01",
                      "--check", "--master", "local[2]", "--json", connection_string=cs, env=env), "tpch.run")
    assert [q["query"] for q in result["queries"]] == ["Q01", "Q06"]
    assert all(q["checked"] and not q["mismatches"] and q["rows"] > 0 for q in result["queries"])
    fs = blob_fs(cs)
    outputs = fs.find(f"{c}/results")
    assert f"{c}/results/TIMES.txt" in outputs and f"{c}/results/Q01/_SUCCESS" in outputs
    parts = [p for p in outputs if "/part-" in p]
    assert parts and all(fs.cat_file(p).startswith(_gcm_magic()) for p in parts)
