"""How encrypted Parquet is written: the footer key, a key per column, the algorithm, the footer mode.

One :class:`ParquetEncryption` drives every writer: pyarrow (:meth:`arrow_config`), Spark's own Parquet
writer with parquet-java's ``PropertiesDrivenCryptoFactory`` (:meth:`hadoop_properties`) and the ``ppml``
data source (:meth:`to_options`). Keys are *master keys*: ppml primary keys by name (see
:mod:`ppml.parquet.kms`). Every column is encrypted: columns that no column key names get the footer key,
so ppml never writes a column whose pages nobody authenticates.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ppml.errors import PpmlInsecureWarning, UsageError

__all__ = ["ParquetEncryption", "ALGORITHMS", "algorithm_name", "parse_column_keys", "DEFAULT_MASTER_KEY"]

#: PME's algorithms by BigDL's crypto mode names (any case).
ALGORITHMS = {"aes_gcm_v1": "AES_GCM_V1", "aes_gcm_ctr_v1": "AES_GCM_CTR_V1"}
DEFAULT_MASTER_KEY = "default"
DATA_KEY_BITS = 256
_CTR_WARNING = ("AES_GCM_CTR_V1 leaves Parquet pages unauthenticated (only page headers and the footer are): "
                "a changed page is not detected. Use AES_GCM_V1 unless a reader needs CTR")


def algorithm_name(mode: str) -> str:
    """``AES_GCM_V1`` or ``AES_GCM_CTR_V1`` for a crypto mode or algorithm name (BigDL's spellings too)."""
    found = ALGORITHMS.get(mode.strip().lower())
    if found is None:
        raise UsageError(f"{mode!r} is not a Parquet encryption algorithm", hint="choose AES_GCM_V1 (the default, "
                         "every page authenticated) or AES_GCM_CTR_V1")
    return found


def parse_column_keys(specs: Iterable[str] | str) -> dict[str, list[str]]:
    """Column keys from ``KEY:col,col`` entries (a list, or one string joined by ``;`` as parquet-java spells it)."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(";") if s.strip()]
    found: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, columns = spec.rpartition(":")
        names = [c.strip() for c in columns.split(",") if c.strip()]
        if not sep or not key.strip() or not names:
            raise UsageError(f"column key {spec!r} is not KEY:COLUMN[,COLUMN...]",
                             hint="e.g. --column-key pii:c_phone,c_address (the master key 'pii' encrypts both)")
        found.setdefault(key.strip(), []).extend(names)
    return found


@dataclass(frozen=True)
class ParquetEncryption:
    """What an encrypted Parquet writer does.

    Parameters
    ----------
    footer_key
        The master key of the footer, and of every column that ``column_keys`` does not name.
    column_keys
        Master key -> columns it encrypts (a name covers its nested fields: ``address`` covers
        ``address.city``). A reader needs the footer key and the keys of the columns it reads.
    algorithm
        ``AES_GCM_V1`` (every page authenticated; default) or ``AES_GCM_CTR_V1`` (pages in AES-CTR, not
        authenticated; warns). BigDL's mode names ``aes_gcm_v1`` / ``aes_gcm_ctr_v1`` are accepted.
    plaintext_footer
        Leave the footer (schema, row counts, statistics of footer-key columns) readable without keys,
        signed with the footer key; legacy readers can then read the columns they hold keys for.
    external_key_material
        Keep key material in ``_KEY_MATERIAL_FOR_<file>.json`` beside each file instead of in its footer:
        re-wrapping then rewrites that small file only.
    double_wrapping
        Wrap each file's data keys with a local key-encryption key, which the KMS wraps (one KMS call per
        master key and process, instead of one per column and file).
    """

    footer_key: str = DEFAULT_MASTER_KEY
    column_keys: Mapping[str, Sequence[str]] = field(default_factory=dict)
    algorithm: str = "AES_GCM_V1"
    plaintext_footer: bool = False
    external_key_material: bool = False
    double_wrapping: bool = True

    def __post_init__(self) -> None:
        if not self.footer_key or not str(self.footer_key).strip():
            raise UsageError("the Parquet footer key must name a master key", hint="e.g. --footer-key tpch")
        object.__setattr__(self, "algorithm", algorithm_name(self.algorithm))
        object.__setattr__(self, "column_keys", {str(k): tuple(str(c) for c in v)
                                                 for k, v in dict(self.column_keys).items()})

    def warn_if_unauthenticated(self) -> None:
        if self.algorithm == "AES_GCM_CTR_V1":
            warnings.warn(_CTR_WARNING, PpmlInsecureWarning, stacklevel=3)

    def assignment(self, columns: Sequence[str]) -> dict[str, list[str]]:
        """Every leaf column path of ``columns`` under its master key (the footer key for unnamed columns).

        Raises :class:`~ppml.errors.UsageError` for a named column that does not exist, or one named twice.
        """
        owner: dict[str, str] = {}
        for key, names in self.column_keys.items():
            for name in names:
                matched = [c for c in columns if c == name or c.startswith(name + ".")]
                if not matched:
                    raise UsageError(f"column key {key!r} names column {name!r}, which the data does not have",
                                     hint="columns: " + ", ".join(columns))
                for column in matched:
                    if owner.get(column, key) != key:
                        raise UsageError(f"column {column!r} is given two keys: {owner[column]!r} and {key!r}")
                    owner[column] = key
        assigned: dict[str, list[str]] = {}
        for column in columns:
            assigned.setdefault(owner.get(column, self.footer_key), []).append(column)
        return assigned

    def restricted_to(self, columns: Sequence[str]) -> ParquetEncryption:
        """A copy whose column keys name only columns in ``columns`` (for writing several tables at once)."""
        kept = {key: [n for n in names if any(c == n or c.startswith(n + ".") for c in columns)]
                for key, names in self.column_keys.items()}
        return dataclasses.replace(self, column_keys={key: names for key, names in kept.items() if names})

    def arrow_config(self, columns: Sequence[str]):
        """pyarrow's ``EncryptionConfiguration`` for a file with these leaf ``columns``."""
        import datetime as _dt

        import pyarrow.parquet.encryption as pe

        self.warn_if_unauthenticated()
        return pe.EncryptionConfiguration(
            footer_key=self.footer_key, column_keys=self.assignment(columns), encryption_algorithm=self.algorithm,
            plaintext_footer=self.plaintext_footer, double_wrapping=self.double_wrapping,
            internal_key_material=not self.external_key_material, data_key_length_bits=DATA_KEY_BITS,
            cache_lifetime=_dt.timedelta(minutes=10))

    def hadoop_properties(self, columns: Sequence[str]) -> dict[str, str]:
        """parquet-java's ``PropertiesDrivenCryptoFactory`` settings for a file with these leaf ``columns``."""
        self.warn_if_unauthenticated()
        keys = ";".join(f"{key}:{','.join(names)}" for key, names in self.assignment(columns).items())
        return {
            "parquet.encryption.footer.key": self.footer_key,
            "parquet.encryption.column.keys": keys,
            "parquet.encryption.algorithm": self.algorithm,
            "parquet.encryption.plaintext.footer": str(self.plaintext_footer).lower(),
            "parquet.encryption.double.wrapping": str(self.double_wrapping).lower(),
            "parquet.encryption.key.material.store.internally": str(not self.external_key_material).lower(),
            "parquet.encryption.data.key.length.bits": str(DATA_KEY_BITS),
        }

    #: field -> data source option
    OPTIONS = {"footer_key": "footerKey", "column_keys": "columnKeys", "plaintext_footer": "plaintextFooter",
               "external_key_material": "externalKeyMaterial", "double_wrapping": "doubleWrapping"}

    def to_options(self) -> dict[str, str]:
        """As ``ppml`` data source options (the algorithm travels as ``cryptoMode``)."""
        return {"footerKey": self.footer_key,
                "columnKeys": ";".join(f"{k}:{','.join(v)}" for k, v in self.column_keys.items()),
                "plaintextFooter": str(self.plaintext_footer).lower(),
                "externalKeyMaterial": str(self.external_key_material).lower(),
                "doubleWrapping": str(self.double_wrapping).lower()}

    @classmethod
    def from_options(cls, options: Mapping[str, str], *, algorithm: str, default_footer_key: str) -> ParquetEncryption:
        """From lower-cased data source options (see :meth:`to_options`)."""
        def flag(name: str, default: bool) -> bool:
            value = options.get(name.lower())
            return default if value is None else str(value).strip().lower() in ("true", "1", "yes", "on")

        return cls(footer_key=options.get("footerkey") or default_footer_key,
                   column_keys=parse_column_keys(options.get("columnkeys", "")), algorithm=algorithm,
                   plaintext_footer=flag("plaintextFooter", False),
                   external_key_material=flag("externalKeyMaterial", False),
                   double_wrapping=flag("doubleWrapping", True))
