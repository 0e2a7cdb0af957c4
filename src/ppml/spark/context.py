"""``PPMLContext``: read and write encrypted data from PySpark, in PySpark's own reader/writer style.

::

    from ppml.spark import PPMLContext

    ctx = PPMLContext(SparkSession.builder.appName("report"), data_key="data-key.json")
    orders = ctx.read().option("header", True).schema(schema).csv("enc/orders")
    ctx.write(result).mode("overwrite").option("header", True).csv("enc/report")

Sessions built by the context get secure defaults: shuffle and spill encryption, authenticated RPC with
AES-GCM outside local mode, redaction of ppml settings in the UI and logs, and Spark's Python filter
pushdown. Turning any of them off produces a :class:`~ppml.errors.PpmlInsecureWarning`.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from ppml.crypto.formats import DEFAULT_FORMAT, get_format
from ppml.errors import AlreadyExistsError, ConfigError, PpmlInsecureWarning, UsageError
from ppml.io.azure import AzureStorageSettings
from ppml.io.storage import locate
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.settings import KeySettings
from ppml.parquet.settings import ALGORITHMS
from ppml.spark import parquet_context
from ppml.spark.datasource import PpmlDataSource

__all__ = ["PPMLContext", "SECURE_DEFAULTS", "register", "secure_session"]

REDACTION = "(?i)secret|password|token|access[.]?key|ppml"
SECURE_DEFAULTS = {
    "spark.io.encryption.enabled": "true",
    "spark.io.encryption.keySizeBits": "256",
    "spark.redaction.regex": REDACTION,
    "spark.sql.redaction.options.regex": "(?i)url|ppml|key|secret|password",
    "spark.sql.python.filterPushdown.enabled": "true",
}
CLUSTER_DEFAULTS = {
    "spark.authenticate": "true",
    "spark.network.crypto.enabled": "true",
    "spark.network.crypto.cipher": "AES/GCM/NoPadding",
}
_SAVE_MODES = {"overwrite", "append", "ignore", "error", "errorifexists", "default"}


def _is_local(master: str | None) -> bool:
    return master is None or master.startswith("local")


def _warn_insecure(conf: dict[str, str], master: str | None) -> None:
    expected = {**SECURE_DEFAULTS, **({} if _is_local(master) else CLUSTER_DEFAULTS)}
    for key in ("spark.io.encryption.enabled", "spark.authenticate", "spark.network.crypto.enabled"):
        if key in expected and str(conf.get(key, expected[key])).lower() != "true":
            warnings.warn(f"{key} is off: shuffle, spill or RPC traffic of this session is not protected",
                          PpmlInsecureWarning, stacklevel=3)
    cipher = conf.get("spark.network.crypto.cipher")
    if not _is_local(master) and cipher and "GCM" not in cipher.upper():
        warnings.warn(f"spark.network.crypto.cipher is {cipher}: Spark's RPC is then not authenticated encryption",
                      PpmlInsecureWarning, stacklevel=3)


def secure_session(builder: SparkSession.Builder | None = None, *, auth_secret_file: str | None = None) -> SparkSession:
    """``builder.getOrCreate()`` with ppml's secure defaults for every setting the builder leaves unset."""
    builder = builder or SparkSession.builder
    # Python workers must run the interpreter that has ppml installed, not whatever python3 is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    given = dict(getattr(builder, "_options", {}))
    master = given.get("spark.master")
    defaults = {**SECURE_DEFAULTS, **({} if _is_local(master) else CLUSTER_DEFAULTS)}
    if auth_secret_file:
        defaults["spark.authenticate.secret"] = Path(auth_secret_file).read_text(encoding="utf-8").strip()
    for key, value in defaults.items():
        if key not in given:
            builder = builder.config(key, value)
    _warn_insecure(given, master)
    return builder.getOrCreate()


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
    azure_storage
        Credentials for ``abfs://``, ``abfss://`` and ``az://`` paths, as
        :class:`~ppml.io.azure.AzureStorageSettings` (secrets as ``env:VAR`` / ``file:PATH`` sources that
        each executor reads itself). Default: each process's ``AZURE_STORAGE_*`` environment variables,
        then ``DefaultAzureCredential``.
    parquet_engine
        How encrypted Parquet is read and written: ``spark`` (Spark's own Parquet reader and writer, keys
        from a ppml key agent; the default) or ``pyarrow`` (the ``ppml`` data source). See
        :mod:`ppml.spark.parquet_context`.
    """

    def __init__(self, spark: SparkSession | SparkSession.Builder | None = None, *, keys: KeySettings | None = None,
                 data_key: str | os.PathLike | None = None, azure_storage: AzureStorageSettings | None = None,
                 parquet_engine: str = parquet_context.DEFAULT_ENGINE) -> None:
        if spark is None or isinstance(spark, SparkSession.Builder):
            spark = secure_session(spark)
        else:
            _warn_insecure(dict(spark.sparkContext.getConf().getAll()), spark.sparkContext.master)
        self.spark = spark
        register(spark)
        self.keys = (keys or _submitted_keys(spark) or KeySettings()).with_environment_broker()
        self._settings = self.keys.to_options()
        if data_key is not None:
            self._settings["dataKeyJson"] = json.dumps(DataKeyFile.load(data_key).to_json())
        self._storage = azure_storage or AzureStorageSettings()
        self._settings.update(self._storage.to_options())
        if parquet_engine not in parquet_context.ENGINES:
            raise UsageError(f"unknown Parquet engine {parquet_engine!r}", hint="choose spark or pyarrow")
        self.parquet_engine = parquet_engine

    def read(self, crypto_mode: str = DEFAULT_FORMAT) -> EncryptedReader:
        """A reader for files in ``crypto_mode`` (each encrypted file's own header names its key)."""
        return EncryptedReader(self, _mode(crypto_mode))

    def write(self, df: DataFrame, crypto_mode: str = DEFAULT_FORMAT) -> EncryptedWriter:
        """A writer of ``df`` in ``crypto_mode``; default save mode ``error`` as in Spark."""
        return EncryptedWriter(self, df, _mode(crypto_mode))


def _mode(crypto_mode: str) -> str:
    """The crypto mode's registered name; PME's algorithm names (BigDL's modes) are kept as they pick one."""
    return crypto_mode.strip().lower() if crypto_mode.strip().lower() in ALGORITHMS else get_format(crypto_mode).name


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
        reader = self._ctx.spark.read.format("ppml").options(**self._options).option("format", format)
        schema = self._schema
        if self._columns is not None:
            if schema is None:
                raise UsageError("columns(...) needs the files' full schema: call .schema(...) first")
            full = schema if isinstance(schema, StructType) else StructType.fromDDL(schema)
            unknown = [c for c in self._columns if c not in full.names]
            if unknown:
                raise ConfigError(f"columns {unknown} are not in the schema", hint=f"columns: {full.names}")
            reader = reader.option("fileSchema", full.json())
            schema = StructType([full[c] for c in self._columns])
        if schema is not None:
            reader = reader.schema(schema)
        if isinstance(path, (list, tuple)):
            return reader.option("paths", json.dumps(list(path))).load()
        return reader.load(path)

    def csv(self, path: str | list[str]) -> DataFrame:
        return self.load(path, "csv")

    def json(self, path: str | list[str]) -> DataFrame:
        return self.load(path, "json")

    def text(self, path: str | list[str]) -> DataFrame:
        return self.load(path, "text")

    def parquet(self, path: str | list[str]) -> DataFrame:
        """Encrypted Parquet (PME) in any encrypted mode, plaintext Parquet with ``plain_text``.

        Data sets are checked against their manifests first; ``.columns(...)`` and ``.schema(...)`` narrow
        what is read. ``.option("parquetEngine", "pyarrow")`` reads through the ``ppml`` data source instead of
        Spark's own reader (see :mod:`ppml.spark.parquet_context`).
        """
        return parquet_context.read(self._ctx, path, self._options, self._schema, self._columns)


class EncryptedWriter:
    """``ctx.write(df, mode).mode("overwrite").option(...).csv(path)``, like ``df.write``."""

    def __init__(self, ctx: PPMLContext, df: DataFrame, crypto_mode: str) -> None:
        self._ctx = ctx
        self._df = df
        self._options: dict[str, str] = {**ctx._settings, "cryptoMode": crypto_mode}
        self._mode = "error"

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
        options = {k.lower(): v for k, v in self._options.items()}
        target = locate(path, azure=AzureStorageSettings.from_options(options))
        exists = target.exists() and (not target.is_dir() or bool(target.files()))
        if exists and self._mode in ("error", "errorifexists", "default"):
            raise AlreadyExistsError(f"{path} already exists", hint="use .mode('overwrite') or .mode('append')")
        if exists and self._mode == "ignore":
            return
        spark_mode = "append" if self._mode == "append" else "overwrite"
        (self._df.write.format("ppml").mode(spark_mode).options(**self._options).option("format", format)
         .save(path))

    def csv(self, path: str) -> None:
        self.save(path, "csv")

    def json(self, path: str) -> None:
        self.save(path, "json")

    def text(self, path: str) -> None:
        self.save(path, "text")

    def parquet(self, path: str) -> None:
        """Encrypted Parquet (PME): every column encrypted, with the footer key (option ``footerKey``; default:
        the primary key that wraps the context's data key) unless ``columnKeys`` (``KEY:col,col;KEY2:col``)
        names another; ``plaintextFooter`` and ``externalKeyMaterial`` as in
        :class:`~ppml.parquet.settings.ParquetEncryption`. ``plain_text`` writes plaintext Parquet."""
        parquet_context.write(self._ctx, self._df, path, self._mode, self._options)
