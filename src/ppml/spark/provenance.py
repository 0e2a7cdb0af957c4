"""What a result's provenance record says about its inputs and query, worked out from the DataFrame written.

The record itself is built and signed when the write commits (:mod:`ppml.io.provenance`); here, on the driver,
the DataFrame's analyzed plan tells which ppml reads feed it (each read carries the data-set versions it was
defined on) and what it computes: the SHA-256 of the canonical analyzed plan, which names no column values
and is the same in every session for the same query and inputs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pyspark.sql import DataFrame

from ppml.crypto.formats import get_format
from ppml.crypto.manifest import Manifest
from ppml.io.datasets import MANIFEST_FOLDER
from ppml.io.files import describe
from ppml.io.storage import locate
from ppml.spark.splits import list_files

__all__ = ["describe_provenance"]

_RELATION = "org.apache.spark.sql.execution.datasources.v2.DataSourceV2Relation"


def describe_provenance(df: DataFrame, label: str | None) -> dict[str, Any]:
    """The inputs, query and Spark version of ``df`` for its result's provenance record (no secret, no data)."""
    plan = df._jdf.queryExecution().analyzed()  # noqa: SLF001 - the plan Spark itself keeps
    inputs: list[dict[str, Any]] = []
    leaves = plan.collectLeaves().iterator()
    while leaves.hasNext():
        leaf = leaves.next()
        if leaf.getClass().getName() != _RELATION:
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
    fmt = get_format(options["cryptomode"])
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
