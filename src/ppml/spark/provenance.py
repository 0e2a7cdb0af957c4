"""What a result's provenance record says about its inputs and query, worked out from the DataFrame written,
and the record's signing when the write commits (:mod:`ppml.io.provenance` builds it).

On the driver, the DataFrame's analyzed plan tells which ppml reads feed it (each read carries the data-set
versions it was defined on; reads of encrypted Parquet by Spark's own reader are remembered here by their
files, since Spark keeps no options of ppml's in their plan) and what it computes: the SHA-256 of the
canonical analyzed plan, which names no column values and is the same in every session for the same query
and inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from pyspark.sql import DataFrame

from ppml.crypto.formats import get_format
from ppml.crypto.manifest import Manifest
from ppml.io.datasets import MANIFEST_FOLDER, DataSetVersion, dataset_roots, file_dataset, latest_version
from ppml.io.files import describe
from ppml.io.provenance import Signer, build_record, write_record
from ppml.io.storage import Location, locate
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.keyring import KeyRing
from ppml.parquet.format import PARQUET_FORMAT
from ppml.spark.options import SourceOptions
from ppml.spark.splits import list_files

__all__ = ["describe_provenance", "record_provenance", "attestation_records", "dataset_versions",
           "remember_parquet_read"]

_RELATION = "org.apache.spark.sql.execution.datasources.v2.DataSourceV2Relation"
_FILE_RELATION = "org.apache.spark.sql.execution.datasources.LogicalRelation"
# Reads of encrypted Parquet by Spark's own reader, by the files they read: what ppml checked them against.
_PARQUET_READS: dict[frozenset[str], dict[str, str]] = {}
_PARQUET_READS_LOCK = threading.Lock()
_MAX_PARQUET_READS = 256


def dataset_versions(paths: Sequence[str], keyring: KeyRing) -> dict[str, int]:
    """The latest version of each data set at or under ``paths`` (or, for a file, the data set of its folder),
    by its URL (authenticated)."""
    versions = {}
    for path in paths:
        location = locate(path)
        if location.is_dir():
            roots = [location.child(relative) if relative else location for relative in dataset_roots(location)]
        else:
            roots = [folder] if (folder := file_dataset(location)) is not None else []
        for root in roots:
            version = latest_version(root, keyring)
            if version is not None:
                versions[root.url] = version.manifest.version
    return versions


def _file_key(path: str) -> str:
    """A file's path as Spark and ppml both write it: local ones absolute (``file:/x``, ``file:///x``, ``/x``
    and ``x`` relative to the working folder alike)."""
    if path.startswith("file:"):
        return "/" + path.removeprefix("file:").lstrip("/")
    return path if "://" in path else os.path.abspath(path)


def remember_parquet_read(files: Sequence[str], paths: Sequence[str], crypto_mode: str,
                          versions: Mapping[str, int]) -> None:
    """Record that Spark's own reader reads ``files`` (checked as ``paths``, at ``versions``)."""
    with _PARQUET_READS_LOCK:
        _PARQUET_READS[frozenset(_file_key(f) for f in files)] = {
            "datasetversions": json.dumps(dict(versions)), "paths": json.dumps(list(paths)),
            "cryptomode": crypto_mode, "format": PARQUET_FORMAT}
        while len(_PARQUET_READS) > _MAX_PARQUET_READS:
            _PARQUET_READS.pop(next(iter(_PARQUET_READS)))


def _parquet_read_of(leaf) -> dict[str, str] | None:
    """The options of the remembered read of a Spark file relation's files, if ppml made it."""
    try:
        roots = leaf.relation().location().rootPaths().iterator()
    except Exception:  # noqa: BLE001 - not a file relation: not a read of ppml's
        return None
    files = []
    while roots.hasNext():
        files.append(_file_key(roots.next().toString()))
    with _PARQUET_READS_LOCK:
        return _PARQUET_READS.get(frozenset(files))


def attestation_records() -> list[dict]:
    """What this process proved to key brokers (none when it never asked one: the client is not loaded)."""
    client = sys.modules.get("ppml.keys.broker_client")
    return client.attestation_records() if client is not None else []


def record_provenance(root: Location, version: DataSetVersion, options: SourceOptions,
                      executors: Sequence[Mapping[str, Any]]) -> None:
    """Sign and write the record of how ``version`` of the data set at ``root`` was made, from the write's
    options (its ``provenance`` description and signing key) and what its processes proved to brokers."""
    ring = options.keys.keyring()
    described = json.loads(options.provenance_json or "{}")
    attested = options.keys.uses_broker()
    if options.signing_key_json:
        record = DataKeyFile.parse(options.signing_key_json.encode(), name="the signing key")
        signer = Signer(ring.unwrap(record.envelope, name="the signing key", key_id=record.key_id),
                        "signing-key", attested)
    else:
        output_key = ring.unwrap(version.manifest.envelope, name=version.location.url,
                                 key_id=version.manifest.key_id)
        signer = Signer(output_key, "data-key", attested)
    processes = [{"process": "driver", **a} for a in attestation_records()]
    processes += [{"process": "executor", **a} for a in {e["evidence_digest"]: e for e in executors}.values()]
    inputs = described.get("inputs") or []
    key_ids = [version.manifest.key_id, *(i["key_id"] for i in inputs if i.get("key_id"))]
    data = build_record(version, inputs=inputs, query=described.get("query") or {}, key_ids=key_ids,
                        attestation=processes, spark=described.get("spark"), signer=signer)
    write_record(root, version.manifest.version, data)


def describe_provenance(df: DataFrame, label: str | None) -> dict[str, Any]:
    """The inputs, query and Spark version of ``df`` for its result's provenance record (no secret, no data)."""
    plan = df._jdf.queryExecution().analyzed()  # noqa: SLF001 - the plan Spark itself keeps
    inputs: list[dict[str, Any]] = []
    leaves = plan.collectLeaves().iterator()
    while leaves.hasNext():
        leaf = leaves.next()
        kind = leaf.getClass().getName()
        if kind == _FILE_RELATION and (remembered := _parquet_read_of(leaf)) is not None:
            inputs.extend(_ppml_inputs(remembered))
            continue
        if kind != _RELATION:
            inputs.append({"source": leaf.nodeName()})
            continue
        options = {str(k): str(v) for k, v in dict(leaf.options()).items()}
        if "cryptomode" not in options:
            inputs.append({"source": leaf.nodeName()})
            continue
        inputs.extend(_ppml_inputs(options))
    digest = hashlib.sha256(plan.canonicalized().toString().encode()).hexdigest()
    return {"inputs": _unique(inputs), "query": {"digest": digest, "label": label}, "spark": df.sparkSession.version}


def _ppml_inputs(options: dict[str, str]) -> list[dict[str, Any]]:
    """One read's inputs: the data sets it was held to, and any files outside them (with their identity)."""
    found: list[dict[str, Any]] = []
    versions = json.loads(options.get("datasetversions", "{}"))
    for url, version in versions.items():
        location = locate(url).child(f"{MANIFEST_FOLDER}/v{int(version):08d}.json")
        with location.open("rb") as handle:
            data = handle.read()
        manifest, _ = Manifest.parse(data, name=location.url)
        found.append({"path": url, "dataset": manifest.dataset, "version": manifest.version,
                      "manifest_digest": hashlib.sha256(data).hexdigest(), "key_id": manifest.key_id})
    roots = [locate(url).path.rstrip("/") + "/" for url in versions]
    paths = tuple(json.loads(options["paths"])) if options.get("paths") else (options.get("path", ""),)
    fmt = get_format(PARQUET_FORMAT if options.get("format") == PARQUET_FORMAT else options["cryptomode"])
    loose = [loc for loc in list_files(paths) if not any(loc.path.startswith(root) for root in roots)]
    if loose:
        files = []
        for location in loose:
            info = describe(location, fmt)
            files.append({"path": location.url, "format": fmt.name, "file_id": fmt.identity(info),
                          "size": int(info.facts["size"])})
        found.append({"path": ",".join(paths), "files": files})
    return found


def _unique(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each input once (a table read twice in one query is one input)."""
    seen: dict[str, dict[str, Any]] = {}
    for entry in inputs:
        seen.setdefault(json.dumps(entry, sort_keys=True), entry)
    return list(seen.values())
