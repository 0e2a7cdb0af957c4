"""Encrypted Parquet (PME) through ppml's key path, without Spark: pyarrow, pandas, DuckDB, the footer and key
material codecs, data sets, rotation, and every integrity claim of docs/parquet.md tested by tampering."""

from __future__ import annotations

import io
import json
import os
import struct
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

import ppml  # noqa: E402
from ppml.errors import CorruptHeaderError, IntegrityError, KeyAccessError, PpmlInsecureWarning, UsageError  # noqa: E402
from ppml.io import files, rotation  # noqa: E402
from ppml.io.storage import locate  # noqa: E402
from ppml.keys.settings import KeySettings  # noqa: E402
from ppml.parquet import agent, footer, thrift  # noqa: E402
from ppml.parquet.datasets import read_file_tail  # noqa: E402
from ppml.parquet.tools import describe, verify_file  # noqa: E402

ROWS = 3000


def _table(rows: int = ROWS, seed: int = 0) -> pa.Table:
    return pa.table({
        "id": pa.array(range(seed, seed + rows), pa.int64()),
        "phone": pa.array([f"555-{i:05d}" for i in range(rows)]),
        "amount": pa.array([i * 0.5 for i in range(rows)], pa.float64()),
        "address": pa.array([{"city": f"c{i % 7}", "zip": i} for i in range(rows)]),
    })


@pytest.fixture
def keys(tmp_path, monkeypatch):
    from keystores import make_keystore

    from ppml.keys.keyring import clear_cache

    clear_cache()
    store = make_keystore(tmp_path / "ks.json", "parquet-test-passphrase", "tpch", "pii", passphrase_file=tmp_path / "ks.pass")
    monkeypatch.chdir(tmp_path)
    yield KeySettings(keystore=str(store.path), passphrase=f"file:{tmp_path / 'ks.pass'}")
    clear_cache()


def _write(keys, path, data=None, **kwargs):
    arguments = {"footer_key": "tpch", "column_keys": {"pii": ["phone", "address"]}, **kwargs}
    return ppml.write_parquet(_table() if data is None else data, path, keys=keys, **arguments)


def _without(keys, tmp_path, master: str) -> KeySettings:
    """Settings whose key store no longer holds ``master``'s versions: a reader without that key."""
    from ppml.keys.keyring import clear_cache

    copy = tmp_path / f"no-{master}.json"
    document = json.loads((tmp_path / "ks.json").read_text())
    document["keys"].pop(master)
    copy.write_text(json.dumps(document))
    copy.chmod(0o600)
    clear_cache()
    return keys.replace(keystore=str(copy))


# -- round trips ---------------------------------------------------------------------------------------


def test_write_read_with_projection_and_row_group_filters(keys, tmp_path):
    _write(keys, "t.parquet", algorithm="aes_gcm_v1")
    table = ppml.read_parquet("t.parquet", keys=keys)
    assert table.equals(_table())
    few = ppml.read_parquet("t.parquet", keys=keys, columns=["id"], filters=[("id", ">=", ROWS - 5)])
    assert few.column("id").to_pylist() == list(range(ROWS - 5, ROWS))
    with pytest.raises(OSError):  # the footer is encrypted: without keys, not even the schema
        pq.read_table("t.parquet")


def test_pandas_and_duckdb(keys):
    duckdb = pytest.importorskip("duckdb")
    frame = _table().to_pandas()
    ppml.write_parquet(frame.drop(columns=["address"]), "data", keys=keys, footer_key="tpch")
    assert ppml.read_parquet("data", keys=keys).to_pandas().equals(frame.drop(columns=["address"]))
    orders = ppml.parquet_dataset("data", keys=keys, columns=["id", "amount"])
    assert duckdb.sql("select count(*), max(amount) from orders where id < 10").fetchall() == [(10, 4.5)]


def test_a_reader_without_a_column_key_reads_the_other_columns(keys, tmp_path):
    _write(keys, "t.parquet")
    limited = _without(keys, tmp_path, "pii")
    assert ppml.read_parquet("t.parquet", keys=limited, columns=["id", "amount"]).num_rows == ROWS
    with pytest.raises(KeyAccessError) as caught:
        ppml.read_parquet("t.parquet", keys=limited, columns=["id", "phone"])
    assert "'phone'" in caught.value.message and "'pii'" in caught.value.message and "t.parquet" in caught.value.message
    with pytest.raises(KeyAccessError, match="address.city"):
        ppml.parquet_dataset("t.parquet", keys=limited)  # checked at open: DuckDB never meets the missing key
    assert ppml.parquet_dataset("t.parquet", keys=limited, columns=["amount"]).to_table().num_rows == ROWS


def test_wrong_key_store_names_the_file_and_key(keys, tmp_path):
    from keystores import make_keystore

    _write(keys, "t.parquet")
    other = make_keystore(tmp_path / "other.json", "parquet-test-passphrase", "tpch", "pii")
    with pytest.raises(KeyAccessError, match="tpch"):
        ppml.read_parquet("t.parquet", keys=KeySettings(keystore=str(other.path), passphrase=f"file:{tmp_path / 'ks.pass'}"))


def test_plaintext_parquet_where_encrypted_is_expected(keys):
    pq.write_table(_table(), "plain.parquet")
    with pytest.raises(IntegrityError, match="plaintext Parquet"):
        ppml.read_parquet("plain.parquet", keys=keys)
    assert files.verify("plain.parquet", keyring=keys.keyring(), mode="parquet").failures


def test_every_column_is_encrypted_and_inspect_names_the_keys(keys):
    _write(keys, "t.parquet", plaintext_footer=True)
    facts = describe(locate("t.parquet"))  # a plaintext footer: columns visible without keys
    columns = {c["column"]: c for c in facts["columns"]}
    assert facts["footer"] == "plaintext, signed" and facts["algorithm"] == "AES_GCM_V1"
    assert columns["phone"]["master_key"] == "pii" and columns["address.zip"]["master_key"] == "pii"
    assert columns["id"]["master_key"] == "tpch" and columns["id"]["wrapped_by"] == ("local:tpch#v1",)
    assert "wrapped" not in json.dumps(facts).replace("wrapped_by", "")  # names and references only
    _write(keys, "e.parquet")
    assert describe(locate("e.parquet"))["columns"] is None  # the encrypted footer hides them
    assert len(describe(locate("e.parquet"), keys)["columns"]) == 5


def test_save_modes_and_data_sets(keys):
    _write(keys, "ds")
    with pytest.raises(Exception, match="already exists"):
        _write(keys, "ds")
    _write(keys, "ds", mode="append", data=_table(10, seed=ROWS))
    assert ppml.read_parquet("ds", keys=keys).num_rows == ROWS + 10
    _write(keys, "ds", mode="overwrite", data=_table(7))
    assert ppml.read_parquet("ds", keys=keys).num_rows == 7
    assert ppml.verify("ds", keys=keys).dataset["version"] == 3
    with pytest.raises(IntegrityError, match="older than the required"):
        ppml.read_parquet("ds", keys=keys, min_version=4)


# -- tampering -----------------------------------------------------------------------------------------


def _tampered(path: str, position: int, *, length: int = 1) -> None:
    data = bytearray(open(path, "rb").read())
    for index in range(position, position + length):
        data[index] ^= 0x01
    open(path, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A small encrypted file and the key settings that read it (written once for the property test)."""
    from keystores import make_keystore

    folder = tmp_path_factory.mktemp("flips")
    make_keystore(folder / "ks.json", "parquet-test-passphrase", "tpch", "pii", passphrase_file=folder / "ks.pass")
    settings_ = KeySettings(keystore=str(folder / "ks.json"), passphrase=f"file:{folder / 'ks.pass'}")
    _write(settings_, str(folder / "t.parquet"), data=_table(200))
    return folder, settings_, (folder / "t.parquet").read_bytes()


@settings(max_examples=40, deadline=None)
@given(fraction=st.floats(min_value=0.0, max_value=0.9999), bit=st.integers(0, 7))
def test_any_changed_bit_is_detected(small_file, fraction, bit):
    """A flipped bit anywhere (pages, page headers, column chunks, footer, key material, lengths, magic) fails
    verification, or changes nothing that is read: PME leaves the informational fields of key metadata
    (kmsInstanceID, kmsInstanceURL, masterKeyID) unauthenticated, and some flips re-encode the plaintext
    FileCryptoMetaData to the same values; those files must still verify and read exactly the original data."""
    folder, settings_, original = small_file
    data = bytearray(original)
    data[int(fraction * len(data))] ^= 1 << bit
    target = folder / "flipped.parquet"
    target.write_bytes(bytes(data))
    try:
        verify_file(locate(str(target)), keyring=settings_.keyring())
    except (IntegrityError, KeyAccessError, CorruptHeaderError):
        return
    assert ppml.read_parquet(str(target), keys=settings_).equals(_table(200))


def test_truncated_swapped_and_spliced_files_fail_with_exit_code_4_naming_the_file(keys, tmp_path):
    _write(keys, "a.parquet", data=_table(500))
    _write(keys, "b.parquet", data=_table(500, seed=1))
    a, b = open("a.parquet", "rb").read(), open("b.parquet", "rb").read()
    tail_a, tail_b = read_file_tail(locate("a.parquet")), read_file_tail(locate("b.parquet"))
    cases = {
        "truncated": a[:-100],
        "footer swapped": a[:tail_a.footer_offset] + b[tail_b.footer_offset:],
        "chunks swapped": b[:tail_b.footer_offset] + a[tail_a.footer_offset:],
        "no footer": a[:tail_a.footer_offset],
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.parquet"
        path.write_bytes(data)
        with pytest.raises(IntegrityError) as caught:
            verify_file(locate(str(path)), keyring=keys.keyring())
        assert caught.value.exit_code == 4 and str(path) in caught.value.message, name


def test_ctr_pages_are_not_authenticated_and_say_so(keys):
    with pytest.warns(PpmlInsecureWarning, match="AES_GCM_CTR_V1"):
        _write(keys, "ctr.parquet", algorithm="aes_gcm_ctr_v1", data=_table(500))
    with pytest.warns(PpmlInsecureWarning, match="not page contents"):
        verify_file(locate("ctr.parquet"), keyring=keys.keyring())


def test_a_replaced_data_set_member_is_detected(keys):
    _write(keys, "ds", data=_table(50))
    _write(keys, "other", data=_table(50))
    [member] = [p for p in os.listdir("ds") if p.endswith(".parquet")]
    [intruder] = [p for p in os.listdir("other") if p.endswith(".parquet")]
    os.replace(f"other/{intruder}", f"ds/{member}")  # a valid file under the same keys
    with pytest.raises(IntegrityError, match="replaced"):
        ppml.read_parquet("ds", keys=keys)
    with pytest.raises(IntegrityError, match="replaced"):
        ppml.read_parquet(f"ds/{member}", keys=keys)  # one file of a data set is checked against it too
    open("ds/extra.parquet", "wb").write(open(f"ds/{member}", "rb").read())
    with pytest.raises(IntegrityError, match="not members"):
        ppml.read_parquet("ds", keys=keys)


def test_external_key_material_tampered_or_missing(keys):
    _write(keys, "t.parquet", external_key_material=True)
    sidecar = "_KEY_MATERIAL_FOR_t.parquet.json"
    store = json.loads(open(sidecar).read())
    material = json.loads(store["footerKey"])
    material["wrappedDEK"] = material["wrappedDEK"][:-8] + "AAAAAAA="
    open(sidecar, "w").write(json.dumps({**store, "footerKey": json.dumps(material)}))
    with pytest.raises(IntegrityError):
        ppml.read_parquet("t.parquet", keys=keys)
    os.remove(sidecar)
    with pytest.raises(IntegrityError, match="missing"):
        ppml.read_parquet("t.parquet", keys=keys)


# -- rotation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("external", [False, True])
def test_rewrap_changes_no_data_byte_and_keeps_column_keys_apart(keys, external):
    _write(keys, "ds", external_key_material=external, plaintext_footer=external)
    [name] = [p for p in os.listdir("ds") if p.endswith(".parquet")]
    before = open(f"ds/{name}", "rb").read()
    offset = read_file_tail(locate(f"ds/{name}")).footer_offset
    kms = keys.primary()
    kms.rotate_key("tpch")
    report = rotation.rewrap("ds", keyring=keys.keyring(), backend=kms, key_name="tpch")
    assert not report.failures
    after = open(f"ds/{name}", "rb").read()
    assert after[:offset] == before[:offset] and (after == before) == external  # data never rewritten
    usage = rotation.key_usage(rotation.scan("ds"))
    assert "local:tpch#v1" not in usage
    columns = {c["column"]: c for c in describe(locate(f"ds/{name}"), keys)["columns"]}
    assert columns["phone"]["wrapped_by"] == ("local:pii#v1",) and columns["id"]["wrapped_by"] == ("local:tpch#v2",)
    kms.retire_version("tpch", "1")
    assert ppml.read_parquet("ds", keys=keys).equals(_table())
    assert ppml.verify("ds", keys=keys).dataset["version"] == 2


def test_rekey_gives_new_data_keys_and_the_same_data(keys):
    _write(keys, "ds", external_key_material=True)
    [name] = [p for p in os.listdir("ds") if p.endswith(".parquet")]
    old = read_file_tail(locate(f"ds/{name}"))
    new_key, wrapped = keys.primary().generate_data_key("tpch")
    report = rotation.rekey("ds", keyring=keys.keyring(), key=new_key, envelope=(wrapped,))
    assert not report.failures
    new = read_file_tail(locate(f"ds/{name}"))
    assert new.file_id != old.file_id
    assert json.loads(open(f"ds/_KEY_MATERIAL_FOR_{name}.json").read()) != {}
    assert ppml.read_parquet("ds", keys=keys).equals(_table())


# -- codecs --------------------------------------------------------------------------------------------

_VALUES = st.recursive(
    st.one_of(st.tuples(st.just(thrift.I64), st.integers(-2**63, 2**63 - 1)),
              st.tuples(st.just(thrift.BINARY), st.binary(max_size=40)),
              st.tuples(st.just(thrift.BOOL_TRUE), st.booleans())),
    lambda children: st.one_of(
        st.lists(children, max_size=5).map(lambda fields: (thrift.STRUCT, thrift.Struct(
            [thrift.Field(i + 1, t, v) for i, (t, v) in enumerate(fields)]))),
        st.lists(st.integers(-1000, 1000), max_size=20).map(lambda items: (thrift.LIST, (thrift.I32, items)))),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(fields=st.lists(_VALUES, max_size=8), gap=st.integers(1, 40))
def test_thrift_structs_round_trip_byte_for_byte(fields, gap):
    struct_ = thrift.Struct([thrift.Field(1 + i * gap, t, v) for i, (t, v) in enumerate(fields)])
    encoded = thrift.encode_struct(struct_)
    decoded, end = thrift.decode_struct(encoded)
    assert end == len(encoded) and thrift.encode_struct(decoded) == encoded


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_hostile_footers_raise_instead_of_crashing(data):
    try:
        thrift.decode_struct(data)
    except thrift.ThriftError:
        pass
    raw = io.BytesIO(b"PARE" + data + struct.pack("<I", len(data)) + b"PARE")
    try:
        footer.read_tail(raw, name="x")
    except CorruptHeaderError:
        pass


def test_pyarrow_footers_decode_and_encode_unchanged(keys):
    _write(keys, "p.parquet", plaintext_footer=True)
    tail = read_file_tail(locate("p.parquet"))
    assert thrift.encode_struct(tail.metadata) == tail.footer


def test_key_agent_protocol():
    def frame(*fields: bytes) -> bytes:
        body = b"".join(struct.pack(">I", len(f)) + f for f in fields)
        return struct.pack(">I", len(body)) + body

    requests = io.BytesIO(frame(b"hello", b"1", b"kms", b"local") + frame(b"dance", b"x", b"y")
                          + frame(b"unwrap", b"tpch", b"not a wrapped key"))
    answers = io.BytesIO()
    assert agent.serve(requests, answers) == 0
    answers.seek(0)
    assert agent.read_frame(answers) == [b"ok", b""]
    assert agent.read_frame(answers)[:2] == [b"error", b"usage"]
    status, code, message = agent.read_frame(answers)
    assert status == b"error" and code == b"corrupt-header" and b"tpch" in message
    refused = io.BytesIO()
    assert agent.serve(io.BytesIO(frame(b"hello", b"2")), refused) == 2


def test_column_keys_must_name_existing_columns(keys):
    with pytest.raises(UsageError, match="nope"):
        _write(keys, "x.parquet", column_keys={"pii": ["nope"]})
    with pytest.raises(UsageError, match="two keys"):
        _write(keys, "x.parquet", column_keys={"pii": ["phone"], "tpch": ["phone"]})
    assert not os.path.exists("x.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _write(keys, "ok.parquet")
