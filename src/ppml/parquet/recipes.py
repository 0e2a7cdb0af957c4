"""The encrypted-Parquet recipes of ``import ppml``: write and read tables, open a dataset for DuckDB.

Keys never pass through the caller's code: master keys are named, and ``keys`` says which key management
services wrap and unwrap them. pandas DataFrames go in as they are and come out with ``.to_pandas()``;
DuckDB queries :func:`parquet_dataset` directly, with projection and filters pushed into the scan.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ppml.keys.settings import KeySettings
from ppml.parquet import tables
from ppml.parquet.settings import DEFAULT_MASTER_KEY, ParquetEncryption

__all__ = ["write_parquet", "read_parquet", "parquet_dataset"]


def write_parquet(data, path: str | os.PathLike, *, keys: KeySettings | None = None,
                  footer_key: str = DEFAULT_MASTER_KEY, column_keys: Mapping[str, Sequence[str]] | None = None,
                  algorithm: str = "AES_GCM_V1", plaintext_footer: bool = False, external_key_material: bool = False,
                  data_key: str | os.PathLike | None = None, mode: str = "error", compression: str = "snappy") -> str:
    """Write a pyarrow Table (or RecordBatchReader, or pandas DataFrame) as encrypted Parquet.

    Parameters
    ----------
    data
        What to write.
    path
        A file (ending in ``.parquet``) or a folder, which becomes a data set with a manifest. Local or URL.
    keys
        The key management services (default: this process's environment and key store).
    footer_key, column_keys
        Master keys (ppml primary key names): the footer's, which also encrypts every column
        ``column_keys`` does not name, and master key -> columns (``{"pii": ["c_phone", "c_address"]}``).
    algorithm
        ``AES_GCM_V1`` (every page authenticated) or ``AES_GCM_CTR_V1`` (pages unauthenticated; warns).
    plaintext_footer, external_key_material
        See :class:`~ppml.parquet.settings.ParquetEncryption`.
    data_key
        Folders: the data-key file that authenticates the manifest (default: a key wrapped by the footer key).
    mode
        ``error`` (default), ``overwrite``, ``append`` (folders) or ``ignore``.
    compression
        Parquet compression (default ``snappy``, as Spark writes).

    Returns
    -------
    str
        The URL written.
    """
    encryption = ParquetEncryption(footer_key=footer_key, column_keys=column_keys or {}, algorithm=algorithm,
                                   plaintext_footer=plaintext_footer, external_key_material=external_key_material)
    return tables.write_table(data, path, keys=keys, encryption=encryption, data_key=data_key, mode=mode,
                              compression=compression)


def read_parquet(path: str | os.PathLike, *, keys: KeySettings | None = None, columns: Sequence[str] | None = None,
                 filters=None, min_version: int | None = None):
    """Read encrypted Parquet (a file or a data set) into a pyarrow Table.

    Only ``columns`` are read (their keys and the footer key are all a reader needs); ``filters`` (a
    pyarrow expression, or pyarrow's ``[("col", "<", 5)]`` form) skip row groups by their statistics and
    drop the other rows. A data set is checked against its manifest first (``min_version`` refuses an older
    version). Errors name the file, and the column and key that could not be had.
    """
    return tables.read_table(path, keys=keys, columns=columns, filters=filters, min_version=min_version)


def parquet_dataset(path: str | os.PathLike, *, keys: KeySettings | None = None,
                    columns: Sequence[str] | None = None, min_version: int | None = None):
    """Encrypted Parquet as a lazily scanned ``pyarrow.dataset.Dataset`` (DuckDB, Polars, Arrow scanners).

    The data set and the keys are checked when it is opened: the dataset holds ``columns`` (default all),
    each of which this process must be able to decrypt.
    """
    return tables.dataset(path, keys=keys, columns=columns, min_version=min_version)
