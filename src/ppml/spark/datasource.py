"""The ``ppml`` Spark data source (Spark 4's Python Data Source API), for ``spark.read.format("ppml")``.

Options (case-insensitive; none is secret):

=========================  ==================================================================
option                     meaning
=========================  ==================================================================
``cryptoMode``             ``aes_gcm_stream`` (default), ``plain_text``, ``aes/cbc/pkcs5padding``
``format``                 ``csv`` (default), ``json`` (JSON lines), ``text`` or ``parquet``
                           (encrypted Parquet, see :mod:`ppml.spark.parquet_source`; with
                           ``footerKey``, ``columnKeys``, ``plaintextFooter``,
                           ``externalKeyMaterial``, ``doubleWrapping`` for writes)
``header``, ``sep``,       CSV layout, as in Spark's CSV source; ``ignoreTrailingDelimiter``
``quote``, ``escape``,     (``auto``/``true``/``false``) handles dbgen's trailing ``|``
``nullValue``
``fileSchema``             the files' full column layout (JSON of a StructType) when the schema
                           given to Spark is narrower: only those columns are parsed
``splitSize``              plaintext bytes per task for splittable files (default 128 MiB)
``filterPushdown``         ``true`` (default): evaluate Spark's filters on Arrow batches
``dataKey``                data-key file to write with (its wrapped copies travel, never the key)
``keystore``,              the local key store and the file holding its passphrase (default:
``keystorePasswordFile``   ``$PPML_KEYSTORE_PASSWORD`` in each executor's environment)
``primaryKeyPlaintext``    BigDL plaintext primary key source: ``env:VAR`` or ``file:PATH``
``simpleKmsPrimaryKeyFile``, ``insecureAllowSimpleKms``: BigDL SimpleKMS (no confidentiality)
``segment``                aes_gcm_stream segment preset for writes (AES256_GCM_HKDF_1MB)
``azureStorageAccount``,   Azure storage for ``abfs://``, ``abfss://``, ``az://`` paths (default: the
``azureStorage...``        ``AZURE_STORAGE_*`` variables of each executor); secrets as ``env:VAR`` or
                           ``file:PATH`` sources: ``azureStorageConnectionString``,
                           ``azureStorageAccountKey``, ``azureStorageSasToken``; ``azureClientId``
                           (user-assigned managed identity), ``azureStorageBlobEndpoint``
=========================  ==================================================================
"""

from __future__ import annotations

import json

from pyspark.sql.datasource import DataSource
from pyspark.sql.types import StringType, StructField, StructType

from ppml.crypto.formats import get_format
from ppml.errors import ConfigError
from ppml.parquet.format import PARQUET_FORMAT
from ppml.spark import parquet_source
from ppml.spark.options import BOOL_TRUE, parse_options
from ppml.spark.reader import FilteringPpmlReader, PpmlReader
from ppml.spark.splits import list_files
from ppml.spark.writer import PpmlWriter

__all__ = ["PpmlDataSource"]


class PpmlDataSource(DataSource):
    """Encrypted CSV / JSON-lines / text files and encrypted Parquet, with keys from a KMS."""

    @classmethod
    def name(cls) -> str:
        return "ppml"

    def _parsed(self):
        return parse_options(self.options)

    def schema(self) -> StructType | str:
        """Without a user schema: ``value string`` for text; CSV columns named by the header, as strings."""
        options = self._parsed()
        if options.text.format == PARQUET_FORMAT:
            return parquet_source.infer_schema(options)
        if options.text.format == "text":
            return StructType([StructField("value", StringType())])
        if options.text.format == "json":
            raise ConfigError("reading JSON needs a schema", hint="pass .schema('a INT, b STRING, ...')")
        files = list_files(options.paths, azure=options.storage)
        if not files:
            raise ConfigError(f"no files to infer a schema from under {', '.join(options.paths)}",
                              hint="pass a schema with .schema(...)")
        first = files[0]
        fmt = get_format(options.crypto_mode)
        with first.open("rb") as raw:
            key = None
            if fmt.encrypted:
                key = options.keys.keyring().unwrap(fmt.describe(raw, name=first.url).envelope, name=first.url)
            with fmt.open_reader(raw, key, name=first.url) as reader:
                line = reader.readline().decode("utf-8").rstrip("\r\n")
        fields = line.split(options.text.sep)
        if fields and fields[-1] == "" and len(fields) > 1:
            fields.pop()
        names = fields if options.text.header else [f"_c{i}" for i in range(len(fields))]
        return StructType([StructField(n, StringType()) for n in names])

    def reader(self, schema: StructType) -> PpmlReader | parquet_source.ParquetReader:
        options = self._parsed()
        pushdown = str(self.options.get("filterPushdown", "true")).lower() in BOOL_TRUE
        if options.text.format == PARQUET_FORMAT:
            return (parquet_source.FilteringParquetReader if pushdown else parquet_source.ParquetReader)(options, schema)
        file_schema = None
        if self.options.get("fileSchema"):
            file_schema = StructType.fromJson(json.loads(self.options["fileSchema"]))
            missing = [n for n in schema.names if n not in file_schema.names]
            if missing:
                raise ConfigError(f"columns {missing} are not in the fileSchema option")
        return (FilteringPpmlReader if pushdown else PpmlReader)(options, schema, file_schema)

    def writer(self, schema: StructType, overwrite: bool) -> PpmlWriter | parquet_source.ParquetWriter:
        options = self._parsed()
        if options.text.format == PARQUET_FORMAT:
            return parquet_source.ParquetWriter(options, schema, overwrite)
        return PpmlWriter(options, schema, overwrite)
