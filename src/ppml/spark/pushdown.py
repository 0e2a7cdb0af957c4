"""Spark filters pushed into the reader, evaluated on Arrow batches before rows cross into the JVM.

Only filters whose Arrow evaluation equals Spark SQL's in a ``WHERE`` clause are taken: comparisons of a
top-level column with a non-null literal, ``IN`` lists without nulls, null tests and string prefix/suffix/
substring tests. Spark's ordering puts NaN above every number, so ``>``/``>=`` on floating columns keep NaN
rows. ``NOT`` and anything else is left to Spark.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.datasource import (
    EqualTo,
    Filter,
    GreaterThan,
    GreaterThanOrEqual,
    In,
    IsNotNull,
    IsNull,
    LessThan,
    LessThanOrEqual,
    StringContains,
    StringEndsWith,
    StringStartsWith,
)

__all__ = ["to_expression", "split_filters"]

_COMPARISONS = {
    EqualTo: lambda f, v: f == v,
    GreaterThan: lambda f, v: f > v,
    GreaterThanOrEqual: lambda f, v: f >= v,
    LessThan: lambda f, v: f < v,
    LessThanOrEqual: lambda f, v: f <= v,
}
_STRINGS = {StringStartsWith: pc.starts_with, StringEndsWith: pc.ends_with, StringContains: pc.match_substring}


def _column(flt: Filter, schema: pa.Schema) -> str | None:
    attribute = getattr(flt, "attribute", None)
    if not attribute or len(attribute) != 1:
        return None
    names = {n.lower(): n for n in schema.names}
    return names.get(attribute[0].lower())


def to_expression(flt: Filter, schema: pa.Schema) -> pc.Expression | None:
    """The Arrow expression equal to ``flt`` in a WHERE clause, or ``None`` if it is not supported."""
    name = _column(flt, schema)
    if name is None:
        return None
    field = pc.field(name)
    arrow_type = schema.field(name).type
    is_float = pa.types.is_floating(arrow_type)
    kind = type(flt)
    if kind in _COMPARISONS:
        value = flt.value
        if value is None or (isinstance(value, float) and value != value):
            return None
        expression = _COMPARISONS[kind](field, value)
        if is_float and kind in (GreaterThan, GreaterThanOrEqual):
            expression = expression | pc.is_nan(field)
        return expression
    if kind is In:
        values = list(flt.value)
        if not values or any(v is None or (isinstance(v, float) and v != v) for v in values):
            return None
        return field.isin(values)
    if kind is IsNull:
        return field.is_null()
    if kind is IsNotNull:
        return field.is_valid()
    if kind in _STRINGS and pa.types.is_string(arrow_type):
        return _STRINGS[kind](field, flt.value)
    return None


def split_filters(filters: Iterable[Filter], schema: pa.Schema) -> tuple[list[pc.Expression], list[Filter]]:
    """``(expressions we evaluate, filters left for Spark)``."""
    taken, left = [], []
    for flt in filters:
        expression = to_expression(flt, schema)
        if expression is None:
            left.append(flt)
        else:
            taken.append(expression)
    return taken, left
