"""ppml.io.files: encrypting, decrypting, verifying and describing files and trees."""

from __future__ import annotations

import io
import os
import shutil
import threading
from pathlib import Path

import pytest

from ppml.crypto import gcm_stream
from ppml.errors import (
    AlreadyExistsError,
    CorruptHeaderError,
    IntegrityError,
    NotFoundError,
    UsageError,
    WrongKeyError,
)
from ppml.io import files
from ppml.io.storage import locate
from ppml.keys.keyring import KeyRing, clear_cache
from ppml.keys.local import LocalKms

SEG = 4096  # small segments so that modest files span many of them


def new_data_key(kms, name: str = "default"):
    key, wrapped = kms.generate_data_key(name)
    return key, (wrapped,)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """The data files of a tree (its data-set manifests left out)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "_ppml_manifest" not in p.parts}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".ppml-partial-" in p.name or ".ppml-old-" in p.name)


def header_of(path: Path) -> gcm_stream.StreamHeader:
    with open(path, "rb") as raw:
        return gcm_stream.read_header(raw, name=str(path))


# -- round trips -------------------------------------------------------------------------------------


def test_single_file_round_trip_is_byte_exact(tmp_path, tree_kms):
    src = tmp_path / "orders.csv"
    src.write_bytes(os.urandom(3 * SEG + 123))
    key, envelope = new_data_key(tree_kms)

    report = files.encrypt(str(src), str(tmp_path / "orders.csv.ppml"), key=key, envelope=envelope,
                           segment_size=SEG)
    encrypted = (tmp_path / "orders.csv.ppml").read_bytes()
    assert encrypted[:4] == gcm_stream.MAGIC
    assert src.read_bytes() not in encrypted
    assert (report.files, report.bytes) == (1, src.stat().st_size)

    # through the key ring (key unwrapped from the header) and with the data key given directly
    files.decrypt(str(tmp_path / "orders.csv.ppml"), str(tmp_path / "a.csv"), keyring=KeyRing([tree_kms]))
    files.decrypt(str(tmp_path / "orders.csv.ppml"), str(tmp_path / "b.csv"), key=key)
    assert (tmp_path / "a.csv").read_bytes() == src.read_bytes()
    assert (tmp_path / "b.csv").read_bytes() == src.read_bytes()
    assert leftovers(tmp_path) == []


def test_tree_round_trip_adds_and_strips_suffix_and_skips_hidden(tmp_path, tree_kms, tree_plain):
    root, visible = tree_plain
    key, envelope = new_data_key(tree_kms)
    enc, dec = tmp_path / "enc", tmp_path / "dec"

    report = files.encrypt(str(root), str(enc), key=key, envelope=envelope, segment_size=SEG)
    assert sorted(tree_bytes(enc)) == sorted(f"{rel}.ppml" for rel in visible)
    assert report.files == len(visible) and report.bytes == sum(map(len, visible.values()))
    assert all(data[:4] == gcm_stream.MAGIC for data in tree_bytes(enc).values())

    report = files.decrypt(str(enc), str(dec), keyring=KeyRing([tree_kms]))
    assert tree_bytes(dec) == visible  # names stripped, bytes exact, hidden files never copied
    assert {d["format"] for d in report.details} == {"aes_gcm_stream"}
    assert leftovers(tmp_path) == []


def test_tree_workers_run_in_parallel_and_report_progress(tmp_path, tree_kms, tree_plain, monkeypatch):
    root, visible = tree_plain
    key, envelope = new_data_key(tree_kms)
    barrier = threading.Barrier(2, timeout=10)
    calls = []
    real_copy = files.copy_stream

    def copy(reader, writer, progress=None):
        calls.append(threading.get_ident())
        if len(calls) <= 2:
            barrier.wait()  # breaks (and the test fails) unless two files are copied at the same time
        return real_copy(reader, writer, progress)

    monkeypatch.setattr(files, "copy_stream", copy)
    seen = []
    lock = threading.Lock()

    def progress(n):
        with lock:
            seen.append(n)

    files.encrypt(str(root), str(tmp_path / "enc"), key=key, envelope=envelope, workers=2, progress=progress,
                  segment_size=SEG)
    assert len(set(calls[:2])) == 2
    assert sum(seen) == sum(map(len, visible.values()))

    calls.clear()
    barrier.reset()
    files.decrypt(str(tmp_path / "enc"), str(tmp_path / "dec"), keyring=KeyRing([tree_kms]), workers=2)
    assert tree_bytes(tmp_path / "dec") == visible


# -- atomicity ---------------------------------------------------------------------------------------


def test_unreadable_file_in_tree_leaves_no_output(tmp_path, tree_kms, tree_plain):
    root, _ = tree_plain
    (root / "a" / "b" / "gone.csv").symlink_to(tmp_path / "does-not-exist")  # unreadable even for root
    key, envelope = new_data_key(tree_kms)

    with pytest.raises(NotFoundError, match="gone.csv"):
        files.encrypt(str(root), str(tmp_path / "enc"), key=key, envelope=envelope, workers=2)
    assert not (tmp_path / "enc").exists()
    assert leftovers(tmp_path) == []


class _DiskFull:
    """Makes ``EncryptingWriter.write`` fail once ``limit`` bytes have been written in total."""

    def __init__(self, monkeypatch, limit: int) -> None:
        self.written = 0
        self.limit = limit
        self.lock = threading.Lock()
        real = gcm_stream.EncryptingWriter.write

        def write(writer, data):
            with self.lock:
                self.written += len(memoryview(data).cast("B"))
                if self.written > self.limit:
                    raise OSError(28, "No space left on device")
            return real(writer, data)

        monkeypatch.setattr(gcm_stream.EncryptingWriter, "write", write)


def test_writer_failing_mid_tree_leaves_no_output(tmp_path, tree_kms, tree_plain, monkeypatch):
    root, _ = tree_plain
    key, envelope = new_data_key(tree_kms)
    _DiskFull(monkeypatch, limit=5_000)

    with pytest.raises(OSError, match="No space left"):
        files.encrypt(str(root), str(tmp_path / "enc"), key=key, envelope=envelope, workers=2,
                      segment_size=SEG)
    assert not (tmp_path / "enc").exists()
    assert leftovers(tmp_path) == []


def test_failed_forced_run_keeps_the_existing_destination(tmp_path, tree_kms, tree_plain, monkeypatch):
    root, _ = tree_plain
    key, envelope = new_data_key(tree_kms)
    enc = tmp_path / "enc"
    files.encrypt(str(root), str(enc), key=key, envelope=envelope, segment_size=SEG)
    before = tree_bytes(enc)

    _DiskFull(monkeypatch, limit=5_000)
    with pytest.raises(OSError):
        files.encrypt(str(root), str(enc), key=key, envelope=envelope, force=True, workers=2)
    assert tree_bytes(enc) == before
    assert leftovers(tmp_path) == []


def test_decrypt_failing_mid_tree_leaves_no_output(tmp_path, tree_kms, tree_plain):
    root, _ = tree_plain
    key, envelope = new_data_key(tree_kms)
    enc = tmp_path / "enc"
    files.encrypt(str(root), str(enc), key=key, envelope=envelope, segment_size=SEG)
    damaged = enc / "a" / "b" / "deep.bin.ppml"
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 1
    damaged.write_bytes(bytes(data))

    with pytest.raises(IntegrityError) as caught:
        files.decrypt(str(enc), str(tmp_path / "dec"), keyring=KeyRing([tree_kms]), workers=2)
    assert caught.value.path.endswith("deep.bin.ppml")
    assert not (tmp_path / "dec").exists()
    assert leftovers(tmp_path) == []


def test_existing_destination_refused_without_force_replaced_with_force(tmp_path, tree_kms, tree_plain):
    root, visible = tree_plain
    key, envelope = new_data_key(tree_kms)
    enc, single = tmp_path / "enc", tmp_path / "top.csv.ppml"
    files.encrypt(str(root), str(enc), key=key, envelope=envelope)
    files.encrypt(str(root / "top.csv"), str(single), key=key, envelope=envelope)
    (enc / "stale.ppml").write_bytes(b"from an earlier run")
    before, single_before = tree_bytes(enc), single.read_bytes()

    with pytest.raises(AlreadyExistsError):
        files.encrypt(str(root), str(enc), key=key, envelope=envelope)
    with pytest.raises(AlreadyExistsError):
        files.encrypt(str(root / "top.csv"), str(single), key=key, envelope=envelope)
    with pytest.raises(AlreadyExistsError):
        files.decrypt(str(single), str(root / "top.csv"), key=key)
    assert tree_bytes(enc) == before and single.read_bytes() == single_before

    files.encrypt(str(root), str(enc), key=key, envelope=envelope, force=True)
    files.encrypt(str(root / "top.csv"), str(single), key=key, envelope=envelope, force=True)
    after = tree_bytes(enc)
    assert "stale.ppml" not in after  # replaced, not merged
    assert sorted(after) == sorted(f"{rel}.ppml" for rel in visible)
    assert after["top.csv.ppml"] != before["top.csv.ppml"]  # new file id: really rewritten
    assert single.read_bytes() != single_before
    files.decrypt(str(enc), str(tmp_path / "dec"), key=key)
    assert tree_bytes(tmp_path / "dec") == visible
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["inside", "same", "parent"])
def test_output_overlapping_input_is_refused(tmp_path, tree_kms, tree_plain, where):
    root, visible = tree_plain
    key, envelope = new_data_key(tree_kms)
    target = {"inside": root / "a" / "enc", "same": root, "parent": tmp_path}[where]

    with pytest.raises(UsageError):
        files.encrypt(str(root), str(target), key=key, envelope=envelope, force=True)
    with pytest.raises(UsageError):
        files.decrypt(str(root), str(target), key=key, force=True)
    assert {rel: data for rel, data in tree_bytes(root).items() if rel in visible} == visible
    assert not (root / "a" / "enc").exists()


# -- keys --------------------------------------------------------------------------------------------


def test_tree_under_two_data_keys_and_a_rotation_decrypts_via_the_key_ring(tmp_path, tree_kms, tree_plain):
    root, visible = tree_plain
    key1, envelope1 = new_data_key(tree_kms)
    tree_kms.rotate_key("default")
    key2, envelope2 = new_data_key(tree_kms)
    assert envelope1[0].version == "1" and envelope2[0].version == "2"

    files.encrypt(str(root / "a"), str(tmp_path / "enc" / "a"), key=key1, envelope=envelope1)
    files.encrypt(str(root / "top.csv"), str(tmp_path / "enc" / "top.csv.ppml"), key=key2, envelope=envelope2)
    versions = {rel: files.describe(locate(str(tmp_path / "enc" / rel))).envelope[0].reference
                for rel in tree_bytes(tmp_path / "enc")}
    assert set(versions.values()) == {"local:default#v1", "local:default#v2"}

    # a fresh process: nothing cached, key store reopened from disk
    clear_cache()
    ring = KeyRing([LocalKms(tree_kms.path, "pw-tree-passphrase")])
    files.decrypt(str(tmp_path / "enc"), str(tmp_path / "dec"), keyring=ring, workers=2)
    assert tree_bytes(tmp_path / "dec") == visible

    # one data key given explicitly cannot open the files of the other
    with pytest.raises(WrongKeyError):
        files.decrypt(str(tmp_path / "enc"), str(tmp_path / "dec2"), key=key1)
    assert not (tmp_path / "dec2").exists()


def test_verify_reports_a_tampered_file_and_the_others_ok(tmp_path, tree_kms, tree_plain):
    root, visible = tree_plain
    key, envelope = new_data_key(tree_kms)
    enc = tmp_path / "enc"
    files.encrypt(str(root), str(enc), key=key, envelope=envelope, segment_size=SEG)
    damaged = enc / "a" / "b" / "deep.bin.ppml"
    offset = header_of(damaged).body_offset + 3 * SEG + 100  # inside segment 3
    data = bytearray(damaged.read_bytes())
    data[offset] ^= 0x80
    damaged.write_bytes(bytes(data))

    report = files.verify(str(enc), keyring=KeyRing([tree_kms]), workers=2)
    by_name = {Path(d["path"]).relative_to(enc).as_posix(): d for d in report.details}
    assert sorted(by_name) == sorted(f"{rel}.ppml" for rel in visible)
    bad = by_name.pop("a/b/deep.bin.ppml")
    assert bad["ok"] is False
    assert bad["error"]["code"] == "integrity" and bad["error"]["segment"] == 3
    assert str(damaged) in bad["error"]["message"]
    assert all(d["ok"] for d in by_name.values())
    assert report.bytes == sum(len(visible[rel[: -len(".ppml")]]) for rel in by_name)


def test_damaged_magic_is_not_mistaken_for_plaintext(tmp_path, tree_kms):
    src = tmp_path / "x.csv"
    src.write_bytes(b"secret,row\n" * 100)
    key, envelope = new_data_key(tree_kms)
    enc = tmp_path / "x.csv.ppml"
    files.encrypt(str(src), str(enc), key=key, envelope=envelope)
    data = bytearray(enc.read_bytes())
    data[0] ^= 0xFF
    enc.write_bytes(bytes(data))

    report = files.verify(str(enc), keyring=KeyRing([tree_kms]))
    assert report.details[0]["ok"] is False and report.details[0]["error"]["code"] == "corrupt-header"
    with pytest.raises(CorruptHeaderError):
        files.decrypt(str(enc), str(tmp_path / "out.csv"), keyring=KeyRing([tree_kms]))
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(CorruptHeaderError):
        files.describe(locate(str(enc)))


# -- reading in place --------------------------------------------------------------------------------


def test_open_decrypted_feeds_pandas_and_pyarrow(tmp_path, tree_kms):
    pandas = pytest.importorskip("pandas")
    pacsv = pytest.importorskip("pyarrow.csv")
    src = tmp_path / "orders.csv"
    src.write_text("orderkey,price,comment\n" + "".join(f"{i},{i * 1.5},note {i}\n" for i in range(3000)))
    key, envelope = new_data_key(tree_kms)
    enc = tmp_path / "orders.csv.ppml"
    files.encrypt(str(src), str(enc), key=key, envelope=envelope, segment_size=SEG)
    ring = KeyRing([tree_kms])

    with files.open_decrypted(str(enc), keyring=ring) as handle:
        frame = pandas.read_csv(handle)
    pandas.testing.assert_frame_equal(frame, pandas.read_csv(src))

    with files.open_decrypted(str(enc), key=key) as handle:
        table = pacsv.read_csv(handle)
    assert table.equals(pacsv.read_csv(str(src)))

    with files.open_decrypted(str(enc), keyring=ring) as handle:  # random access, then the tail
        handle.seek(-10, io.SEEK_END)
        assert handle.read() == src.read_bytes()[-10:]


def test_describe_needs_no_key(tmp_path, tree_kms):
    src = tmp_path / "x.csv"
    src.write_bytes(b"a,b\n1,2\n")
    key, envelope = new_data_key(tree_kms)
    enc = tmp_path / "x.csv.ppml"
    files.encrypt(str(src), str(enc), key=key, envelope=envelope, segment_size=SEG)
    shutil.move(tree_kms.path, tmp_path / "elsewhere.json")  # no key store reachable at all

    info = files.describe(locate(str(enc)))
    assert info.format == "aes_gcm_stream"
    assert [w.reference for w in info.envelope] == ["local:default#v1"]
    assert info.facts["segment_size"] == SEG and info.facts["size"] == enc.stat().st_size
    assert files.describe(locate(str(src))).format == "plain_text"


def test_an_empty_staging_parent_is_removed_but_not_from_under_another_writer(tmp_path):
    """Concurrent appends share ``_temporary``: the first to finish must not remove the folder another job has
    just made for its part (the part's file not written yet), or that job's task fails."""
    from ppml.io.storage import locate

    parent = tmp_path / "_temporary"
    (parent / "other-job").mkdir(parents=True)
    locate(str(parent)).remove_if_empty()
    assert (parent / "other-job").is_dir()
    (parent / "other-job").rmdir()
    locate(str(parent)).remove_if_empty()
    assert not parent.exists()
