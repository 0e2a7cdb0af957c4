"""Data sets and provenance through PySpark: what Spark writes is a data set with a manifest and a signed
provenance record, what it reads is checked against manifests, and a file replaced while a job runs is refused.
"""

from __future__ import annotations

import json
import shutil
import threading

import pytest

pyspark = pytest.importorskip("pyspark")

from pyspark.errors import PySparkException  # noqa: E402

from ppml.errors import IntegrityError, UnprotectedDataWarning, UsageError  # noqa: E402
from ppml.io import files  # noqa: E402
from ppml.io.datasets import MANIFEST_FOLDER, latest_version  # noqa: E402
from ppml.io.provenance import FOLDER, public_key_of, verify_provenance  # noqa: E402
from ppml.io.storage import locate  # noqa: E402
from ppml.spark import PPMLContext  # noqa: E402
from ppml.spark.options import parse_options  # noqa: E402
from ppml.spark.reader import PpmlReader  # noqa: E402

pytestmark = pytest.mark.slow
SCHEMA = "id long, name string"


@pytest.fixture
def ctx(spark_session, spark_keys):
    return PPMLContext(spark_session, data_key=spark_keys["data_key"], keys=spark_keys["settings"])


def _frame(ctx, start: int, count: int, parts: int = 2):
    return ctx.spark.createDataFrame([(i, f"name{i}") for i in range(start, start + count)], SCHEMA).repartition(parts)


def _read(ctx, path) -> list[int]:
    return sorted(r.id for r in ctx.read().option("header", True).schema(SCHEMA).csv(str(path)).collect())


def test_spark_outputs_are_data_sets_with_signed_provenance(ctx, spark_keys, tmp_path):
    source, out = tmp_path / "source", tmp_path / "out"
    ctx.write(_frame(ctx, 0, 100)).option("header", True).csv(str(source))
    ring = spark_keys["settings"].keyring()
    read = ctx.read().option("header", True).schema(SCHEMA).csv(str(source))
    ctx.write(read.filter("id < 40")).label("the first forty").option("header", True).csv(str(out))
    assert _read(ctx, out) == list(range(40))
    version = latest_version(locate(str(out)), ring)
    assert version.manifest.version == 1 and len(version.manifest.members) >= 1
    report = verify_provenance(locate(str(out)), ring)
    record = json.loads((out / FOLDER / "v00000001.json").read_text())
    assert record["query"]["label"] == "the first forty" and len(record["query"]["digest"]) == 64
    [source_input] = [i for i in record["inputs"] if "dataset" in i]
    assert source_input["version"] == 1 and source_input["path"] == locate(str(source)).url
    assert report["inputs"][0]["ok"] and record["signer"]["kind"] == "data-key"
    assert spark_keys["key"].key_id in record["key_ids"]
    assert spark_keys["key"].unsafe_material().hex() not in json.dumps(record)

    # The same query gives the same digest; another query another one.
    ctx.write(read.filter("id < 40")).option("header", True).csv(str(tmp_path / "again"))
    ctx.write(read.filter("id < 41")).option("header", True).csv(str(tmp_path / "other"))
    digest = {p: json.loads((tmp_path / p / FOLDER / "v00000001.json").read_text())["query"]["digest"]
              for p in ("out", "again", "other")}
    assert digest["out"] == digest["again"] != digest["other"]

    # Any edit of the record, the result or the input is refused.
    path = out / FOLDER / "v00000001.json"
    original = path.read_text()
    path.write_text(original.replace("the first forty", "the first fifty"))
    with pytest.raises(IntegrityError, match="not signed by the expected key"):
        verify_provenance(locate(str(out)), ring)
    path.write_text(original)
    manifest = out / MANIFEST_FOLDER / "v00000001.json"
    manifest_bytes = manifest.read_bytes()
    manifest.write_bytes(manifest_bytes.replace(b'"writer":"ppml', b'"writer":"PPML'))
    with pytest.raises(IntegrityError, match="failed authentication"):
        verify_provenance(locate(str(out)), ring)
    manifest.write_bytes(manifest_bytes)
    victim = next(p for p in sorted((source).glob("part-*")))
    shutil.copy2(victim, source / "part-99999-copy.csv.ppml")
    with pytest.raises(IntegrityError, match="part-99999-copy"):
        verify_provenance(locate(str(out)), ring)


def test_a_signing_key_signs_records_and_its_public_key_verifies_them(spark_session, spark_keys, tmp_path):
    from ppml.keys.datakey_file import DataKeyFile

    signer_key, wrapped = spark_keys["kms"].generate_data_key("default")
    DataKeyFile.new(signer_key.key_id, (wrapped,)).save(tmp_path / "signer.json")
    ctx = PPMLContext(spark_session, data_key=spark_keys["data_key"], keys=spark_keys["settings"],
                      signing_key=str(tmp_path / "signer.json"))
    ctx.write(_frame(ctx, 0, 10)).csv(str(tmp_path / "out"))
    ring = spark_keys["settings"].keyring()
    with pytest.raises(UsageError, match="give its public key"):
        verify_provenance(locate(str(tmp_path / "out")), ring)
    report = verify_provenance(locate(str(tmp_path / "out")), ring, trusted=public_key_of(signer_key))
    assert report["signer"]["kind"] == "signing-key" and report["signer"]["key_id"] == signer_key.key_id
    with pytest.raises(IntegrityError, match="not signed by the expected key"):
        verify_provenance(locate(str(tmp_path / "out")), ring, trusted=public_key_of(spark_keys["key"]))


def test_attacks_on_a_spark_output_are_refused_naming_the_member(ctx, spark_keys, tmp_path):
    out = tmp_path / "out"
    ctx.write(_frame(ctx, 0, 50)).option("header", True).csv(str(out))
    part = next(out.glob("part-*"))
    part.unlink()
    (out / part.name.removesuffix(".ppml")).write_text("id,name\n666,mallory\n")  # plaintext, same stem
    with pytest.raises(IntegrityError, match=part.name.removesuffix(".ppml")):
        _read(ctx, out)
    with pytest.raises(PySparkException, match="not members"):  # Spark's own reader: the same check in planning
        (ctx.spark.read.format("ppml").options(**spark_keys["settings"].to_options()).option("header", True)
         .schema(SCHEMA).load(str(out)).count())
    report = files.verify(str(out), keyring=spark_keys["settings"].keyring())
    assert report.failures and report.failures[0]["kind"] == "data set"


def test_a_file_replaced_after_planning_is_refused_by_its_task(ctx, spark_keys, tmp_path):
    out, other = tmp_path / "out", tmp_path / "other"
    ctx.write(_frame(ctx, 0, 50, parts=1)).option("header", True).csv(str(out))
    ctx.write(_frame(ctx, 1000, 50, parts=1)).option("header", True).csv(str(other))
    options = parse_options({**spark_keys["settings"].to_options(), "header": "true", "path": str(out)})
    from pyspark.sql.types import StructType

    reader = PpmlReader(options, StructType.fromDDL(SCHEMA), None)
    [split] = reader.partitions()
    [part] = list(out.glob("part-*"))
    shutil.copy2(next(other.glob("part-*")), part)  # a valid file under the same data key, same name
    with pytest.raises(IntegrityError, match="not the file this job planned to read"):
        list(reader.read(split))


def test_appends_race_and_readers_see_whole_versions(ctx, spark_keys, tmp_path):
    out = tmp_path / "out"
    ctx.write(_frame(ctx, 0, 10, parts=1)).option("header", True).csv(str(out))
    errors: list[BaseException] = []

    def append(start: int) -> None:
        try:
            ctx.write(_frame(ctx, start, 10, parts=1)).mode("append").option("header", True).csv(str(out))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    writers = [threading.Thread(target=append, args=(start,)) for start in (100, 200)]
    for writer in writers:
        writer.start()
    seen = set()
    while any(w.is_alive() for w in writers):
        seen.add(len(_read(ctx, out)))  # whole versions only: 10, 20 or 30 rows, never an error
    for writer in writers:
        writer.join()
    assert not errors, errors
    assert seen <= {10, 20, 30}
    assert _read(ctx, out) == [*range(10), *range(100, 110), *range(200, 210)]
    assert latest_version(locate(str(out)), spark_keys["settings"].keyring()).manifest.version == 3


def test_a_read_sees_the_version_it_was_defined_on(ctx, tmp_path):
    out = tmp_path / "out"
    ctx.write(_frame(ctx, 0, 10)).option("header", True).csv(str(out))
    defined = ctx.read().option("header", True).schema(SCHEMA).csv(str(out))
    ctx.write(_frame(ctx, 10, 10)).mode("append").option("header", True).csv(str(out))
    assert defined.count() == 10  # version 1 as it was: the appended files are not read
    assert len(_read(ctx, out)) == 20  # defined again, it reads version 2
    ctx.write(_frame(ctx, 50, 5)).mode("overwrite").option("header", True).csv(str(out))
    # Version 1's files are gone: refused in planning, or (a plan Spark kept) by the task that wanted one.
    with pytest.raises(PySparkException, match="missing member|does not exist"):
        defined.count()


def test_tpch_tables_are_a_data_set(ctx, tpch_encrypted, tmp_path):
    from ppml.tpch.runner import ppml_tables

    enc = tmp_path / "enc"
    shutil.copytree(tpch_encrypted["encrypted"], enc)
    assert (enc / MANIFEST_FOLDER).is_dir()
    keys = ctx.keys.replace(keystore=str(tpch_encrypted["keystore"]),
                            passphrase=f"file:{tpch_encrypted['password_file']}")
    tpch_ctx = PPMLContext(ctx.spark, keys=keys)
    assert ppml_tables(tpch_ctx, str(enc), "aes_gcm_stream", scale=0.01)["nation"].count() == 25
    (enc / "nation.tbl.ppml").unlink()
    (enc / "nation.tbl").write_text("0|ATLANTIS|0|injected|\n")
    with pytest.raises(IntegrityError, match="nation.tbl"):
        ppml_tables(tpch_ctx, str(enc), "aes_gcm_stream", scale=0.01)["nation"].count()


def test_a_folder_without_manifest_reads_with_a_warning(ctx, spark_keys, tmp_path):
    out = tmp_path / "out"
    ctx.write(_frame(ctx, 0, 10)).option("header", True).csv(str(out))
    shutil.rmtree(out / MANIFEST_FOLDER)
    shutil.rmtree(out / FOLDER)
    with pytest.warns(UnprotectedDataWarning, match="belong to no data set"):
        assert len(_read(ctx, out)) == 10


def test_parse_errors_name_the_file_row_and_column_never_the_data(ctx, spark_keys, tmp_path, capfd):
    """A value that does not parse, or a row with too few columns, is reported by position; the canary in it
    reaches no error message and no log."""
    from ppml.keys.datakey_file import DataKeyFile

    canary = "secret-salary-9999"
    record = DataKeyFile.load(spark_keys["data_key"])
    rows = ["id,name,amount"] + [f"{i},name{i},{i}.5" for i in range(1, 300)]
    cases = {"value": rows[:150] + [f"150,bob,{canary}"] + rows[151:],
             "columns": rows[:200] + [f"200,{canary}"] + rows[201:]}
    for case, lines in cases.items():
        (tmp_path / f"{case}.csv").write_text("\n".join(lines) + "\n")
        files.encrypt(str(tmp_path / f"{case}.csv"), str(tmp_path / case / "data.csv.ppml"), key=spark_keys["key"],
                      envelope=record.envelope)
    for case, expected in (("value", r"row 150, column 3 \(amount\): the value is not a valid double"),
                           ("columns", r"row 200 has 2 columns where 3 were expected")):
        with pytest.raises(PySparkException, match=expected) as info:
            (ctx.read().option("header", True).schema("id long, name string, amount double")
             .csv(str(tmp_path / case)).collect())
        assert canary not in str(info.value) and "data.csv.ppml" in str(info.value)
    captured = capfd.readouterr()
    assert canary not in captured.out + captured.err


def test_provenance_through_the_command_line(ctx, spark_keys, tmp_path):
    """`ppml keys signing-key`, then `ppml provenance show|verify` on a result; a re-wrapped result still
    verifies; an edited record exits 4."""
    import subprocess
    import sys
    from pathlib import Path

    ppml = Path(sys.executable).with_name("ppml")
    keys = ["--keystore", spark_keys["keystore"], "--passphrase-file", spark_keys["password_file"]]

    def run(*args):
        return subprocess.run([str(ppml), *map(str, args)], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    made = run("keys", "signing-key", "--out", tmp_path / "signer.json", *keys, "--json")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "signer.pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    signed = PPMLContext(ctx.spark, data_key=spark_keys["data_key"], keys=spark_keys["settings"],
                         signing_key=str(tmp_path / "signer.json"))
    out = tmp_path / "out"
    signed.write(_frame(ctx, 0, 20)).label("twenty rows").csv(str(out))

    shown = run("provenance", "show", out)
    assert shown.returncode == 0 and json.loads(shown.stdout)["record"]["query"]["label"] == "twenty rows"
    unpinned = run("provenance", "verify", out, *keys)
    assert unpinned.returncode == 2 and "give its public key" in unpinned.stderr
    verified = run("provenance", "verify", out, *keys, "--signer", tmp_path / "signer.pub.pem", "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["signer"]["kind"] == "signing-key"
    assert run("provenance", "verify", out, *keys, "--signer", tmp_path / "signer.json").returncode == 0

    spark_keys["kms"].rotate_key("default")
    assert run("rewrap", out, *keys).returncode == 0
    rewrapped = run("provenance", "verify", out, *keys, "--signer", tmp_path / "signer.pub.pem", "--json")
    assert rewrapped.returncode == 0, rewrapped.stderr
    assert json.loads(rewrapped.stdout)["rewrapped_since"] is True

    record = out / FOLDER / "v00000001.json"
    record.write_text(record.read_text().replace("twenty rows", "thirty rows"))
    edited = run("provenance", "verify", out, *keys, "--signer", tmp_path / "signer.pub.pem")
    assert edited.returncode == 4 and "not signed by the expected key" in edited.stderr
