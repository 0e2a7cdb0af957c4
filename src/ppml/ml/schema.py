"""Feature columns recorded with a model, and the check that data to score has them.

A model's features are a list of ``{"name": ..., "type": ...}`` in the order the model takes them; the type is
a Spark SQL type name (``double``, ``bigint``, ``string``...) or ``None`` when unknown. Types are compared by
family: any number may stand for any number (scoring casts), but a string never stands for a number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ppml.errors import SchemaMismatchError, UsageError

__all__ = ["Column", "columns_of", "check_columns", "family", "sql_type"]

Column = dict[str, Any]

_NUMERIC = {"tinyint", "smallint", "int", "integer", "bigint", "long", "short", "byte", "float", "double", "real",
            "boolean", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
            "float32", "float64", "halffloat"}
_TEXT = {"string", "str", "large_string", "utf8", "large_utf8", "object", "category", "dictionary"}


def family(type_name: str | None) -> str | None:
    """``numeric``, ``text``, or the lower-cased type itself for anything else (``None`` when unknown)."""
    if type_name is None:
        return None
    lowered = type_name.lower()
    if lowered in _NUMERIC or lowered.startswith("decimal"):
        return "numeric"
    if lowered in _TEXT or lowered.startswith("dictionary"):
        return "text"
    return lowered


def _spark_name(type_obj: Any) -> str:
    simple = getattr(type_obj, "simpleString", None)  # a Spark DataType
    return simple() if callable(simple) else str(type_obj)


def columns_of(schema: Any) -> list[Column]:
    """Columns from a list of names, a ``{name: type}`` mapping, a pyarrow schema, a Spark ``StructType``, a
    pandas DataFrame, or a list of ``{"name", "type"}`` dicts (as stored in manifests)."""
    if schema is None:
        return []
    module = type(schema).__module__.split(".")[0]
    if module == "pandas" and hasattr(schema, "dtypes"):  # a DataFrame: its columns
        return [{"name": str(n), "type": str(t)} for n, t in zip(schema.columns, schema.dtypes, strict=True)]
    if module == "pyarrow" and hasattr(schema, "names"):  # a schema or a table
        arrow = getattr(schema, "schema", schema)
        return [{"name": n, "type": str(t)} for n, t in zip(arrow.names, arrow.types, strict=True)]
    fields = getattr(schema, "fields", None)
    if fields is not None:  # a Spark StructType
        return [{"name": f.name, "type": _spark_name(f.dataType)} for f in fields]
    if isinstance(schema, Mapping):
        return [{"name": str(n), "type": None if t is None else _spark_name(t)} for n, t in schema.items()]
    if isinstance(schema, (str, bytes)) or not isinstance(schema, Iterable):
        raise UsageError(f"features must be a list of column names or a schema, not {type(schema).__name__}")
    columns = []
    for item in schema:
        if isinstance(item, Mapping):
            columns.append({"name": str(item["name"]), "type": item.get("type")})
        else:
            columns.append({"name": str(item), "type": None})
    return columns


def check_columns(expected: Sequence[Column], available: Sequence[Column], *, what: str) -> None:
    """Raise :class:`SchemaMismatchError` when ``available`` lacks a column of ``expected`` or has it with a
    type of another family; ``what`` names the data in the message."""
    have = {c["name"]: c.get("type") for c in available}
    missing = [c["name"] for c in expected if c["name"] not in have]
    clashes = [f"{c['name']} ({have[c['name']]}, model: {c['type']})" for c in expected
               if c["name"] in have and family(c.get("type")) and family(have[c["name"]])
               and family(c.get("type")) != family(have[c["name"]])]
    if missing or clashes:
        problems = []
        if missing:
            problems.append(f"missing columns {missing}")
        if clashes:
            problems.append(f"columns of another type: {', '.join(clashes)}")
        raise SchemaMismatchError(f"{what} does not fit the model: {'; '.join(problems)}",
                                  hint="the model expects " + ", ".join(
                                      f"{c['name']} {c.get('type') or '?'}" for c in expected))


_SQL_TYPES = {"int8": "tinyint", "int16": "smallint", "int32": "int", "int64": "bigint", "uint8": "smallint",
              "uint16": "int", "uint32": "bigint", "uint64": "bigint", "halffloat": "float", "float": "float",
              "double": "double", "bool": "boolean", "string": "string", "large_string": "string",
              "date32[day]": "date"}


def sql_type(arrow_type: Any) -> str:
    """The Spark SQL name of an Arrow type (``int64`` -> ``bigint``); text for types CSV cannot carry."""
    name = str(arrow_type)
    if name.startswith("timestamp"):
        return "timestamp"
    if name.startswith("decimal"):
        return name.replace("decimal128", "decimal").replace(" ", "")
    return _SQL_TYPES.get(name, "string")
