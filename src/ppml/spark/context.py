"""``PPMLContext``: read and write encrypted data from PySpark, in PySpark's own reader/writer style.

::

    from ppml.spark import PPMLContext

    ctx = PPMLContext(SparkSession.builder.appName("report"), data_key="data-key.json")
    orders = ctx.read().option("header", True).schema(schema).csv("enc/orders")
    ctx.write(result).mode("overwrite").option("header", True).csv("enc/report")

Sessions built by the context get secure defaults (:mod:`ppml.spark.session`): shuffle and spill
encryption, authenticated RPC with AES-GCM, redaction of ppml settings in the UI and logs, and Spark's
Python filter pushdown. Turning any of them off produces a :class:`~ppml.errors.PpmlInsecureWarning`.

Spark cannot ask a Python data source how big it is, so on its own it would never broadcast a ppml table
in a join, as it does a small file it reads itself. The reader therefore estimates each read the way
Spark estimates a file scan (the size of the files, times the share of the row's width that is read) and
marks reads under ``spark.sql.autoBroadcastJoinThreshold`` for broadcast joins.
"""

from __future__ import annotations

import json
import os
import warnings

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from ppml.crypto.formats import DEFAULT_FORMAT, get_format
from ppml.errors import AlreadyExistsError, ConfigError, UnprotectedDataWarning, UsageError
from ppml.io.azure import AzureStorageSettings
from ppml.io.storage import locate
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.settings import KeySettings
from ppml.spark.datasource import PpmlDataSource
from ppml.spark.provenance import describe_provenance
from ppml.spark.session import secure_session, warn_insecure
from ppml.spark.sizing import broadcastable, split_size
from ppml.spark.splits import survey

__all__ = ["PPMLContext", "register"]

_SAVE_MODES = {"overwrite", "append", "ignore", "error", "errorifexists", "default"}


def _storage(options: dict[str, str]) -> AzureStorageSettings:
    """The Azure storage settings among data source ``options`` (any case)."""
    return AzureStorageSettings.from_options({k.lower(): v for k, v in options.items()})


def _submitted_keys(spark: SparkSession) -> KeySettings | None:
    """Key settings that ``ppml submit`` gave the job as ``spark.ppml.keys.*`` settings, if any."""
    prefix = "spark.ppml.keys."
    options = {k[len(prefix):]: v for k, v in spark.sparkContext.getConf().getAll() if k.startswith(prefix)}
    return KeySettings.from_options(options) if options else None


def register(spark: SparkSession) -> None:
    """Register the ``ppml`` data source with ``spark`` and turn on Python filter pushdown."""
    spark.dataSource.register(PpmlDataSource)
    spark.conf.set("spark.sql.python.filterPushdown.enabled", "true")


class PPMLContext:
    """The entry point for encrypted reads and writes.

    Parameters
    ----------
    spark
        A ``SparkSession``, a ``SparkSession.Builder`` (built with ppml's secure defaults), or ``None``
        for a default local session.
    keys
        Which key management services the driver and every executor use, as
        :class:`~ppml.keys.settings.KeySettings` (the local key store, Azure Key Vault, an HSM token, a key
        broker, BigDL's key types). They travel to the executors as data source options, which hold no
        secret: passphrases and PINs are named by source (``file:/run/secrets/...``, ``env:VAR``) and each
        executor reads them itself. A key broker set only in the driver's environment (``$PPML_BROKER_URL``
        and its companions) is passed on too. Default: each process's environment and key store.
    data_key
        Data-key file used for encrypted writes (its wrapped copies travel to executors, never the key).
    signing_key
        Signing-key file (``ppml keys signing-key``) that signs the provenance record of every result written;
        default: each result's own data key (see :mod:`ppml.io.provenance`).
    azure_storage
        Credentials for ``abfs://``, ``abfss://`` and ``az://`` paths, as
        :class:`~ppml.io.azure.AzureStorageSettings` (secrets as ``env:VAR`` / ``file:PATH`` sources that
        each executor reads itself). Default: each process's ``AZURE_STORAGE_*`` environment variables,
        then ``DefaultAzureCredential``.
    """

    def __init__(self, spark: SparkSession | SparkSession.Builder | None = None, *, keys: KeySettings | None = None,
                 data_key: str | os.PathLike | None = None, azure_storage: AzureStorageSettings | None = None,
                 signing_key: str | os.PathLike | None = None) -> None:
        if spark is None or isinstance(spark, SparkSession.Builder):
            spark = secure_session(spark)
        else:
            warn_insecure(dict(spark.sparkContext.getConf().getAll()), spark.sparkContext.master)
        self.spark = spark
        register(spark)
        self.keys = (keys or _submitted_keys(spark) or KeySettings()).with_environment_broker()
        self._settings = self.keys.to_options()
        if data_key is not None:
            self._settings["dataKeyJson"] = json.dumps(DataKeyFile.load(data_key).to_json())
        if signing_key is not None:
            self._settings["signingKeyJson"] = json.dumps(DataKeyFile.load(signing_key).to_json())
        self._storage = azure_storage or AzureStorageSettings()
        self._settings.update(self._storage.to_options())

    def read(self, crypto_mode: str = DEFAULT_FORMAT) -> EncryptedReader:
        """A reader for files in ``crypto_mode`` (each encrypted file's own header names its key)."""
        return EncryptedReader(self, get_format(crypto_mode).name)

    def write(self, df: DataFrame, crypto_mode: str = DEFAULT_FORMAT) -> EncryptedWriter:
        """A writer of ``df`` in ``crypto_mode``; default save mode ``error`` as in Spark."""
        return EncryptedWriter(self, df, get_format(crypto_mode).name)


class EncryptedReader:
    """``ctx.read(mode).option(...).schema(...).csv(path)``, like ``spark.read``."""

    def __init__(self, ctx: PPMLContext, crypto_mode: str) -> None:
        self._ctx = ctx
        self._options: dict[str, str] = {**ctx._settings, "cryptoMode": crypto_mode}
        self._schema: StructType | str | None = None
        self._columns: list[str] | None = None

    def option(self, key: str, value: object) -> EncryptedReader:
        self._options[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return self

    def options(self, **options: object) -> EncryptedReader:
        for key, value in options.items():
            self.option(key, value)
        return self

    def schema(self, schema: StructType | str) -> EncryptedReader:
        self._schema = schema
        return self

    def columns(self, *names: str) -> EncryptedReader:
        """Parse only these columns of the files (column pruning); the others are skipped while parsing."""
        self._columns = list(names)
        return self

    def load(self, path: str | list[str], format: str = "csv") -> DataFrame:  # noqa: A002
        """The files at ``path`` (a file, folder, glob, or a list of them) as a DataFrame.

        Split across the session's cores and marked for broadcast joins by size as Spark does its own
        file scans (see :mod:`ppml.spark.sizing`); an explicit ``splitSize`` option wins.
        """
        paths = tuple(path) if isinstance(path, (list, tuple)) else (path,)
        found = survey(paths, self._options["cryptoMode"], azure=_storage(self._options),
                       keyring=self._ctx.keys.keyring())
        if found.unprotected:
            warnings.warn(f"{len(found.unprotected)} encrypted file(s) read from {', '.join(paths)} belong to no "
                          "data set with a manifest (e.g. " + found.unprotected[0] + "): files deleted, added or "
                          "replaced among them cannot be detected", UnprotectedDataWarning, stacklevel=3)
        sizes = found.sizes
        spark = self._ctx.spark
        # The data-set versions found now are the ones this DataFrame reads: a later version is refused.
        reader = spark.read.format("ppml").options(**{"splitSize": str(split_size(spark, sizes)), **self._options,
                                                      "datasetVersions": json.dumps(found.versions)})
        reader = reader.option("format", format)
        schema = self._schema
        file_schema = None
        if self._columns is not None:
            if schema is None:
                raise UsageError("columns(...) needs the files' full schema: call .schema(...) first")
            file_schema = schema if isinstance(schema, StructType) else StructType.fromDDL(schema)
            unknown = [c for c in self._columns if c not in file_schema.names]
            if unknown:
                raise ConfigError(f"columns {unknown} are not in the schema", hint=f"columns: {file_schema.names}")
            reader = reader.option("fileSchema", file_schema.json())
            schema = StructType([file_schema[c] for c in self._columns])
        if schema is not None:
            reader = reader.schema(schema)
        df = reader.option("paths", json.dumps(list(paths))).load() if len(paths) > 1 else reader.load(paths[0])
        return df.hint("broadcast") if broadcastable(spark, sizes, df.schema, file_schema or df.schema) else df

    def csv(self, path: str | list[str]) -> DataFrame:
        return self.load(path, "csv")

    def json(self, path: str | list[str]) -> DataFrame:
        return self.load(path, "json")

    def text(self, path: str | list[str]) -> DataFrame:
        return self.load(path, "text")


class EncryptedWriter:
    """``ctx.write(df, mode).mode("overwrite").option(...).csv(path)``, like ``df.write``."""

    def __init__(self, ctx: PPMLContext, df: DataFrame, crypto_mode: str) -> None:
        self._ctx = ctx
        self._df = df
        self._options: dict[str, str] = {**ctx._settings, "cryptoMode": crypto_mode}
        self._mode = "error"
        self._label: str | None = None

    def label(self, text: str) -> EncryptedWriter:
        """Name what this result is (``TPC-H Q01``) in its provenance record."""
        self._label = text
        return self

    def mode(self, save_mode: str) -> EncryptedWriter:
        if save_mode.lower() not in _SAVE_MODES:
            raise UsageError(f"unknown save mode {save_mode!r}", hint="use overwrite, append, ignore or error")
        self._mode = save_mode.lower()
        return self

    def option(self, key: str, value: object) -> EncryptedWriter:
        self._options[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return self

    def options(self, **options: object) -> EncryptedWriter:
        for key, value in options.items():
            self.option(key, value)
        return self

    def save(self, path: str, format: str = "csv") -> None:  # noqa: A002
        target = locate(path, azure=_storage(self._options))
        exists = target.exists() and (not target.is_dir() or bool(target.files()))
        if exists and self._mode in ("error", "errorifexists", "default"):
            raise AlreadyExistsError(f"{path} already exists", hint="use .mode('overwrite') or .mode('append')")
        if exists and self._mode == "ignore":
            return
        spark_mode = "append" if self._mode == "append" else "overwrite"
        (self._df.write.format("ppml").mode(spark_mode).options(**self._options).option("format", format)
         .option("provenance", json.dumps(describe_provenance(self._df, self._label))).save(path))

    def csv(self, path: str) -> None:
        self.save(path, "csv")

    def json(self, path: str) -> None:
        self.save(path, "json")

    def text(self, path: str) -> None:
        self.save(path, "text")
