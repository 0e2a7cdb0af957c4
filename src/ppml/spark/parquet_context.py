"""Encrypted Parquet from :class:`~ppml.spark.context.PPMLContext`: ``ctx.read(mode).parquet(path)`` and
``ctx.write(df, mode).parquet(path)``, on one of two engines.

``spark`` (the default): Spark's own Parquet reader and writer, with parquet-java's
``PropertiesDrivenCryptoFactory`` and ppml's ``KmsClient`` (:mod:`ppml.parquet.jvm`), which asks a ppml key
agent on the same host for keys. Spark does the column pruning, filter pushdown and vectorised decoding it
does for plaintext Parquet, so encrypted Parquet runs at about plaintext speed.

``pyarrow``: the ``ppml`` data source (:mod:`ppml.spark.parquet_source`), pyarrow in Spark's Python workers.
It reads any fsspec URL (``abfss://`` without Hadoop's Azure jars) and checks each file's identity in the
task that reads it; rows cross from Python into the JVM, which costs time.

Both check the input against its data-set manifests before reading, and record the output's next version
after writing. Crypto modes: any encrypted mode (``aes_gcm_v1`` and ``aes_gcm_ctr_v1``, BigDL's names, or
the default) reads PME; writes use AES_GCM_V1 unless the mode is ``aes_gcm_ctr_v1``; ``plain_text`` reads
and writes plaintext Parquet.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from py4j.protocol import Py4JError, Py4JJavaError
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from ppml.crypto.formats import get_format
from ppml.errors import AlreadyExistsError, ConfigError, UsageError
from ppml.io.azure import AZURE_PROTOCOLS
from ppml.io.datasets import commit_version, latest_version
from ppml.io.storage import locate
from ppml.parquet import jvm
from ppml.parquet.datasets import Part, checked_parts, member_of
from ppml.parquet.format import PARQUET_FORMAT
from ppml.parquet.tables import leaf_columns
from ppml.spark.options import parse_options
from ppml.spark.parquet_source import encryption, infer_schema, manifest_envelope
from ppml.spark.provenance import dataset_versions, describe_provenance, record_provenance, remember_parquet_read

__all__ = ["ENGINES", "DEFAULT_ENGINE", "read", "write", "install_client"]

ENGINES = ("spark", "pyarrow")
DEFAULT_ENGINE = "spark"
ENGINE_OPTION = "parquetEngine"
# Spark infers a Parquet read's schema with a job that reads a footer. An encrypted read's files are checked
# against their manifests first, and each footer is authenticated with its file's identity, so the schema
# Spark inferred for the same files (URLs, identities, sizes) under the same settings still holds: later
# reads pass it to Spark and skip that job. Reader options are not part of the key because this path hands
# Spark none of the user's.
_SCHEMAS: OrderedDict[tuple, tuple[float, StructType]] = OrderedDict()
_SCHEMAS_LOCK = threading.Lock()
_MAX_SCHEMAS = 256
_INFERENCE_SETTINGS = ("spark.sql.parquet.binaryAsString", "spark.sql.parquet.int96AsTimestamp",
                       "spark.sql.parquet.inferTimestampNTZ.enabled", "spark.sql.legacy.parquet.nanosAsLong",
                       "spark.sql.parquet.mergeSchema", "spark.sql.caseSensitive")
_CLIENT_READY: set[str] = set()  # applications whose driver loads ppml's key client


def install_client(spark) -> None:
    """Make ppml's parquet-java key client available to this session's executors and its driver (once).

    ``addJar`` reaches the executors' tasks. parquet-java also makes key clients from the driver's Hadoop
    configuration (which tasks share in local mode), whose class loader sees only the jars the session
    started with; for a session started without ppml's ``spark.jars`` the jar joins that loader too.
    """
    application = spark.sparkContext.applicationId
    if application in _CLIENT_READY:
        return
    jar = jvm.client_jar()
    loader = spark.sparkContext._jsc.hadoopConfiguration().getClassLoader()
    try:
        spark._jvm.java.lang.Class.forName(jvm.CLIENT_CLASS, False, loader)
    except Py4JJavaError:
        try:
            loader.addURL(spark._jvm.java.io.File(str(jar)).toURI().toURL())
        except Py4JError as error:
            raise ConfigError(f"cannot add ppml's parquet-java key client ({jar}) to this Spark driver",
                              hint=f"start the session with spark.jars={jar} (ppml.spark.secure_session "
                                   "does)") from error
    context = spark.sparkContext._jsc.sc()
    if jar.name not in str(context.listJars().mkString(",")):
        context.addJar(str(jar))
    _CLIENT_READY.add(application)


def _engine(ctx, options: dict[str, str], paths: list[str]) -> str:
    engine = str(options.pop(ENGINE_OPTION, ctx.parquet_engine)).lower()
    if engine not in ENGINES:
        raise UsageError(f"unknown Parquet engine {engine!r}", hint="choose spark or pyarrow")
    if engine == "spark" and any(p.split("://", 1)[0].lower() in AZURE_PROTOCOLS for p in paths if "://" in p):
        return "pyarrow"  # pyspark has no Hadoop Azure file system; ppml's source reads through fsspec
    if engine == "spark":
        install_client(ctx.spark)
    return engine


def read(ctx, path: str | list[str], options: dict[str, str], schema: StructType | str | None,
         columns: list[str] | None) -> DataFrame:
    """See :meth:`~ppml.spark.context.EncryptedReader.parquet`."""
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    options = dict(options)
    engine = _engine(ctx, options, paths)
    encrypted = get_format(options["cryptoMode"]).encrypted
    if engine == "pyarrow":
        versions = dataset_versions(paths, ctx.keys.keyring()) if encrypted else {}
        reader = (ctx.spark.read.format("ppml").options(**options).option("format", PARQUET_FORMAT)
                  .option("datasetVersions", json.dumps(versions)))
        if columns is not None:
            full = schema or infer_schema(parse_options({**options, "format": PARQUET_FORMAT,
                                                         "paths": json.dumps(paths)}))
            full = full if isinstance(full, StructType) else StructType.fromDDL(full)
            schema = StructType([full[c] for c in columns])  # the source reads only the schema's columns
        if schema is not None:
            reader = reader.schema(schema)
        return reader.option("paths", json.dumps(paths)).load() if len(paths) > 1 else reader.load(paths[0])
    parts: list[Part] = []
    versions: dict[str, int] = {}  # what the provenance record names: the versions these files were checked at
    for item in paths:
        parts.extend(checked_parts(item, keyring=ctx.keys.keyring() if encrypted else None, encrypted=encrypted,
                                   versions=versions))
    files = [p.location.url for p in parts]
    read_options = jvm.read_options(ctx.keys) if encrypted else {}
    reader = ctx.spark.read.options(**read_options)
    # per key settings, as parquet-java keeps its keys: a reader that may not decrypt a footer is not told
    # the schema another reader's keys opened
    known = (_schema_key(ctx.spark, read_options[jvm.ACCESS_TOKEN], parts) if encrypted and schema is None
             else None)
    schema = schema if known is None else _known_schema(known)
    if schema is not None:
        reader = reader.schema(schema)
    df = reader.parquet(*files)
    if known is not None and schema is None:
        _remember_schema(known, df.schema)
    if encrypted:
        remember_parquet_read(files, paths, options["cryptoMode"], versions)
    return df.select(*columns) if columns is not None else df


def _schema_key(spark, keys_token: str, parts: Sequence[Part]) -> tuple:
    """What a schema Spark inferred depends on: the files (by identity), the session settings that change
    inference, and the key settings (a reader that may not open a footer is not told its schema)."""
    settings = tuple(spark.conf.get(name, None) for name in _INFERENCE_SETTINGS)
    return keys_token, settings, tuple((p.location.url, p.tail.file_id, p.size) for p in parts)


def _known_schema(key: tuple) -> StructType | None:
    """The schema remembered under ``key``, for as long as parquet-java keeps the keys that opened it."""
    with _SCHEMAS_LOCK:
        found = _SCHEMAS.get(key)
        if found is None or time.monotonic() - found[0] > jvm.CACHE_SECONDS:
            _SCHEMAS.pop(key, None)
            return None
        _SCHEMAS.move_to_end(key)
        return found[1]


def _remember_schema(key: tuple, schema: StructType) -> None:
    with _SCHEMAS_LOCK:
        _SCHEMAS[key] = (time.monotonic(), schema)
        while len(_SCHEMAS) > _MAX_SCHEMAS:
            _SCHEMAS.popitem(last=False)


def write(ctx, df: DataFrame, path: str, save_mode: str, options: Mapping[str, str], label: str | None = None) -> None:
    """See :meth:`~ppml.spark.context.EncryptedWriter.parquet`."""
    options = {**options, "provenance": json.dumps(describe_provenance(df, label))}
    engine = _engine(ctx, options, [path])
    source = parse_options({**options, "format": PARQUET_FORMAT, "path": path})
    target = locate(path, azure=source.storage)
    exists = target.exists() and (not target.is_dir() or bool(target.files()))
    if exists and save_mode in ("error", "errorifexists", "default"):
        raise AlreadyExistsError(f"{path} already exists", hint="use .mode('overwrite') or .mode('append')")
    if exists and save_mode == "ignore":
        return
    spark_mode = "append" if save_mode == "append" else "overwrite"
    if engine == "pyarrow":
        df.write.format("ppml").mode(spark_mode).options(**options).option("format", PARQUET_FORMAT).save(path)
        return
    if not get_format(source.crypto_mode).encrypted:
        df.write.mode(spark_mode).parquet(path)
        return
    settings = encryption(source)
    properties = settings.hadoop_properties(leaf_columns(to_arrow_schema(df.schema, timezone="UTC")))
    envelope = manifest_envelope(source, settings.footer_key)  # before writing: a write without a key fails early
    keyring = ctx.keys.keyring()
    previous = latest_version(target, keyring) if spark_mode == "append" and target.exists() else None
    df.write.mode(spark_mode).options(**jvm.write_options(ctx.keys, properties)).parquet(path)
    recorded = set(previous.members()) if previous is not None else set()
    added = [member_of(target, relative) for relative, _ in target.files() if relative not in recorded]
    version = commit_version(target, added, replace=spark_mode == "overwrite",
                             key=keyring.unwrap(envelope, name=target.url), envelope=envelope, keyring=keyring,
                             writer="ppml Spark writer (encrypted Parquet, Spark's writer)",
                             existing=lambda: [member_of(target, relative) for relative, _ in target.files()])
    record_provenance(target, version, source, executors=())
