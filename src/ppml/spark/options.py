"""Data source options, parsed once on the driver into small picklable values.

Options are what users pass to ``.option(...)`` (case-insensitive). None of them is secret: data keys
travel only in wrapped form; key settings are :class:`~ppml.keys.settings.KeySettings` as options, whose
passphrases, PINs and BigDL primary keys are named by *source* (``env:VAR`` / ``file:PATH``), which each
executor resolves for itself; so are Azure storage credentials (``azureStorageConnectionString``,
``azureStorageAccountKey``, ``azureStorageSasToken``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ppml.crypto.envelope import WrappedKey
from ppml.crypto.formats import DEFAULT_FORMAT
from ppml.errors import ConfigError, UsageError
from ppml.io.azure import AzureStorageSettings
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.settings import KeySettings

__all__ = ["TextOptions", "SourceOptions", "parse_options", "BOOL_TRUE"]

BOOL_TRUE = {"true", "1", "yes", "on"}
FILE_FORMATS = ("csv", "json", "text")
DEFAULT_SPLIT_SIZE = 128 * 1024 * 1024
_KNOWN = {
    "path", "paths", "format", "cryptomode", "header", "sep", "delimiter", "quote", "escape", "nullvalue",
    "columns", "splitsize", "datakey", "datakeyjson", "segment", "ignoretrailingdelimiter", "fileschema",
    "filterpushdown", "datasetversions", "provenance", "signingkeyjson",
    *(name.lower() for name in KeySettings.OPTIONS.values()),
    *(name.lower() for name in AzureStorageSettings.OPTIONS.values()),
}


@dataclass(frozen=True)
class TextOptions:
    """How rows are laid out in the files."""

    format: str = "csv"
    header: bool = False
    sep: str = ","
    quote: str | None = '"'
    escape: str | None = None
    null_value: str = ""
    trailing_delimiter: str = "auto"  # "auto" | "true" | "false"


@dataclass(frozen=True)
class SourceOptions:
    paths: tuple[str, ...]
    crypto_mode: str
    text: TextOptions
    keys: KeySettings
    data_key_json: str | None = None
    columns: tuple[str, ...] | None = None
    split_size: int = DEFAULT_SPLIT_SIZE
    segment: str | None = None
    storage: AzureStorageSettings = AzureStorageSettings()
    #: Reads: data-set URL -> the version the read was defined on (a data set written since is refused).
    dataset_versions: tuple[tuple[str, int], ...] = ()
    #: Writes: what the result's provenance record says about its inputs and query (JSON), and the signing key.
    provenance_json: str | None = None
    signing_key_json: str | None = None

    @property
    def expected_versions(self) -> dict[str, int]:
        return dict(self.dataset_versions)

    def envelope(self) -> tuple[WrappedKey, ...]:
        """The wrapped copies of the data key to write with (never the key itself)."""
        if self.data_key_json is None:
            raise UsageError("writing encrypted data needs a data key",
                             hint="pass .option('dataKey', 'path/to/data-key.json') or PPMLContext(data_key=...)")
        return DataKeyFile.parse(self.data_key_json.encode(), name="the dataKey option").envelope


def _flag(options: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = options.get(name)
    return default if value is None else str(value).strip().lower() in BOOL_TRUE


def _char(value: str | None, name: str, *, allow_none: bool) -> str | None:
    if value is None:
        return None
    if value == "" and allow_none:
        return None
    text = value.encode().decode("unicode_escape") if value.startswith("\\") else value
    if len(text) != 1:
        raise ConfigError(f"option {name!r} must be a single character, not {value!r}")
    return text


def parse_options(options: Mapping[str, str], *, path: str | None = None) -> SourceOptions:
    """Validate and normalise data source options; unknown options are errors, not silently ignored."""
    lowered = {str(k).lower(): str(v) for k, v in options.items()}
    unknown = sorted(k for k in lowered if k not in _KNOWN)
    if unknown:
        raise ConfigError(f"unknown ppml option(s): {', '.join(unknown)}",
                          hint="known options: " + ", ".join(sorted(_KNOWN)))
    raw_paths = path or lowered.get("path") or lowered.get("paths")
    if not raw_paths:
        raise UsageError("no path given", hint="pass the path to .load(path) / .csv(path), or .option('path', ...)")
    paths = tuple(json.loads(raw_paths)) if raw_paths.startswith("[") else (raw_paths,)
    file_format = lowered.get("format", "csv").lower()
    if file_format not in FILE_FORMATS:
        raise ConfigError(f"unsupported file format {file_format!r}", hint="choose csv, json or text")
    sep = lowered.get("sep", lowered.get("delimiter", ","))
    text = TextOptions(
        format=file_format,
        header=_flag(lowered, "header"),
        sep=_char(sep, "sep", allow_none=False),
        quote=_char(lowered.get("quote", '"'), "quote", allow_none=True),
        escape=_char(lowered.get("escape"), "escape", allow_none=True),
        null_value=lowered.get("nullvalue", ""),
        trailing_delimiter=lowered.get("ignoretrailingdelimiter", "auto").lower(),
    )
    data_key_json = lowered.get("datakeyjson")
    if data_key_json is None and lowered.get("datakey"):
        data_key_json = json.dumps(DataKeyFile.load(os.path.expanduser(lowered["datakey"])).to_json())
    keys = KeySettings.from_options(lowered)
    columns = tuple(c.strip() for c in lowered["columns"].split(",") if c.strip()) if lowered.get("columns") else None
    try:
        split_size = int(lowered.get("splitsize", DEFAULT_SPLIT_SIZE))
    except ValueError:
        raise ConfigError(f"option 'splitSize' must be a number of bytes, not {lowered['splitsize']!r}") from None
    if split_size < 1024 * 1024:
        raise ConfigError("option 'splitSize' must be at least 1 MiB")
    storage = AzureStorageSettings.from_options(lowered)
    try:
        versions = tuple((str(url), int(v)) for url, v in json.loads(lowered.get("datasetversions", "{}")).items())
    except (ValueError, AttributeError, TypeError):
        raise ConfigError("option 'datasetVersions' must be a JSON object of data-set URL -> version") from None
    return SourceOptions(paths, lowered.get("cryptomode", DEFAULT_FORMAT), text, keys, data_key_json, columns,
                         split_size, lowered.get("segment"), storage, versions, lowered.get("provenance"),
                         lowered.get("signingkeyjson"))
