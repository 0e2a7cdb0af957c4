"""Encrypted Parquet: Parquet Modular Encryption (PME) with ppml's keys.

PME (the Apache Parquet standard) encrypts each column with its own data key and the footer with another;
pyarrow, Spark (parquet-java) and other readers implement it. ppml supplies the key management: master keys
are ppml primary keys, wrapped keys are ppml envelopes, so every key path (key store, Azure Key Vault,
PKCS#11, the attested key broker) works, per column. See ``docs/parquet.md``.

Modules: :mod:`~ppml.parquet.settings` (what a writer does), :mod:`~ppml.parquet.tables` (read and write
tables and datasets), :mod:`~ppml.parquet.tools` (inspect, verify, decrypt, convert), :mod:`~ppml.parquet.rotation`
(re-wrap and re-key), :mod:`~ppml.parquet.kms` (pyarrow's key management client), :mod:`~ppml.parquet.agent`
and :mod:`~ppml.parquet.jvm` (the key agent behind Spark's own Parquet reader and writer), and the file-level
codecs :mod:`~ppml.parquet.footer`, :mod:`~ppml.parquet.keymaterial`, :mod:`~ppml.parquet.thrift`.
Importing this package imports none of them.
"""
