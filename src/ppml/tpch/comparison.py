"""Checking an engine's TPC-H answer against the expected one, within the tolerances floating point needs.

:func:`compare` returns human-readable mismatches such as ``"Q05 row 3 column revenue: 1234.5 != 1234.6"``
(actual != expected, rows counted from 1); an empty list means the answers agree. The expected rows
usually come from :mod:`ppml.tpch.oracle`, whose exact decimal sums differ from Spark's sums of doubles in
the last digits, hence the tolerances. Rows are compared the way the specification allows them to vary:
in any order where the query has no ORDER BY or within a run of equal ORDER BY keys, and with other rows
in the last run when LIMIT cuts through it. Needs neither duckdb nor pyspark.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import numbers
from collections import defaultdict
from collections.abc import Iterable, Sequence

from ppml.errors import UsageError
from ppml.tpch.spec import SPECS, QuerySpec

__all__ = ["ABS_TOL", "AVG_REL_TOL", "REL_TOL", "compare"]

#: relative tolerance for sums and plain numbers
REL_TOL = 1e-6
#: absolute tolerance added for sums of doubles (well below a cent)
ABS_TOL = 1e-4
#: relative tolerance for averages and ratios (the usual tolerance for floating averages)
AVG_REL_TOL = 1e-4


def _norm(value: object) -> object:
    """Engine-neutral form of a value: dates as ISO strings, decimals as floats, ints as ints."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, _dt.datetime):
        return value.date().isoformat() if value.time() == _dt.time() else value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _close(a: object, e: object, rel: float, abs_: float) -> bool:
    if a is None or e is None:
        return a is None and e is None
    a_num = isinstance(a, (int, float)) and not isinstance(a, bool)
    e_num = isinstance(e, (int, float)) and not isinstance(e, bool)
    if a_num and e_num:
        if isinstance(a, int) and isinstance(e, int):
            return a == e
        if math.isnan(a) or math.isnan(e):  # type: ignore[arg-type]
            return math.isnan(a) and math.isnan(e)  # type: ignore[arg-type]
        return math.isclose(a, e, rel_tol=rel, abs_tol=abs_)  # type: ignore[arg-type]
    return a == e


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


class _Comparer:
    def __init__(self, spec: QuerySpec, rel_tol: float, abs_tol: float, avg_rel_tol: float,
                 max_messages: int) -> None:
        self.spec = spec
        self.cols = list(spec.columns)
        self.tol = [(avg_rel_tol, abs_tol) if c in spec.averages else (rel_tol, abs_tol) for c in self.cols]
        self.messages: list[str] = []
        self.max_messages = max_messages
        self.dropped = 0

    def say(self, text: str) -> None:
        if len(self.messages) < self.max_messages:
            self.messages.append(f"{self.spec.label} {text}")
        else:
            self.dropped += 1

    def same(self, i: int, a: object, e: object) -> bool:
        rel, abs_ = self.tol[i]
        return _close(a, e, rel, abs_)

    def row_equal(self, a: tuple, e: tuple, cols: Sequence[int]) -> bool:
        return all(self.same(i, a[i], e[i]) for i in cols)

    def report_row(self, row_no: int, a: tuple, e: tuple, cols: Sequence[int]) -> None:
        for i in cols:
            if not self.same(i, a[i], e[i]):
                self.say(f"row {row_no} column {self.cols[i]}: {_show(a[i])} != {_show(e[i])}")

    def describe(self, row: tuple) -> str:
        return ", ".join(f"{c}={_show(v)}" for c, v in zip(self.cols, row))

    @staticmethod
    def _bucket_key(row: tuple, cols: Sequence[int]) -> tuple:
        key = []
        for i in cols:
            v = row[i]
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = float(f"{float(v):.5g}")
            key.append((type(v).__name__ if not isinstance(v, (int, float)) else "num", v))
        return tuple(key)

    def match(self, exp: list[tuple[int, tuple]], act: list[tuple], cols: Sequence[int]) -> None:
        """Match rows as multisets; report unmatched ones (``exp`` carries 1-based row numbers)."""
        # 1. cheap pairing of rows whose rounded values agree, checked with the real tolerance
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for j, a in enumerate(act):
            buckets[self._bucket_key(a, cols)].append(j)
        used = [False] * len(act)
        left_exp: list[tuple[int, tuple]] = []
        for row_no, e in exp:
            cands = buckets.get(self._bucket_key(e, cols), [])
            for k, j in enumerate(cands):
                if self.row_equal(act[j], e, cols):
                    used[j] = True
                    del cands[k]
                    break
            else:
                left_exp.append((row_no, e))
        left_act = [j for j in range(len(act)) if not used[j]]
        # 2. rows near a rounding boundary: pair by tolerance (quadratic, but only over the leftovers)
        if left_exp and left_act and len(left_exp) * len(left_act) <= 4_000_000:
            still: list[tuple[int, tuple]] = []
            for row_no, e in left_exp:
                for k, j in enumerate(left_act):
                    if self.row_equal(act[j], e, cols):
                        del left_act[k]
                        break
                else:
                    still.append((row_no, e))
            left_exp = still
        # 3. what is left differs: pair in order and name the columns, then extra/missing rows
        for (row_no, e), j in zip(left_exp, left_act):
            self.report_row(row_no, act[j], e, cols)
        for row_no, e in left_exp[len(left_act):]:
            self.say(f"row {row_no} missing from the answer: {self.describe(e)}")
        for j in left_act[len(left_exp):]:
            self.say(f"unexpected row: {self.describe(act[j])}")

    def run(self, actual: list[tuple], expected: list[tuple]) -> list[str]:
        ncols = len(self.cols)
        for name, rows in (("answer", actual), ("expected answer", expected)):
            for k, r in enumerate(rows, 1):
                if len(r) != ncols:
                    self.say(f"row {k} of the {name} has {len(r)} columns, expected {ncols} "
                             f"({', '.join(self.cols)})")
                    return self.finish()
        all_cols = list(range(ncols))
        if len(actual) != len(expected):
            self.say(f"row count: {len(actual)} != {len(expected)}")
            self.match(list(enumerate(expected, 1)), actual, all_cols)
            return self.finish()
        if not self.spec.order_by:
            self.match(list(enumerate(expected, 1)), actual, all_cols)
            return self.finish()
        # Rows with equal ORDER BY keys may come in any order: compare each run of equal keys as a
        # multiset. When LIMIT cut the answer, the last run may continue past the cut (even if only one of
        # its rows made it in) and hold different, equally valid rows: only its keys must agree.
        key_idx = [self.cols.index(c) for c, _ in self.spec.order_by]
        groups: list[list[int]] = []
        for k, e in enumerate(expected):
            if groups and self.row_equal(expected[groups[-1][-1]], e, key_idx):
                groups[-1].append(k)
            else:
                groups.append([k])
        cut = self.spec.limit is not None and len(expected) >= self.spec.limit
        for g, members in enumerate(groups):
            cols = key_idx if (cut and g == len(groups) - 1) else all_cols
            exp = [(k + 1, expected[k]) for k in members]
            act = [actual[k] for k in members]
            if all(self.row_equal(a, e, cols) for a, (_, e) in zip(act, exp)):
                continue
            if len(members) == 1:
                self.report_row(members[0] + 1, act[0], exp[0][1], cols)
            else:
                self.match(exp, act, cols)
        return self.finish()

    def finish(self) -> list[str]:
        if self.dropped:
            self.messages.append(f"{self.spec.label} ... and {self.dropped} more mismatches")
        return self.messages


def compare(n: int, actual_rows: Iterable[Sequence[object]], expected_rows: Iterable[Sequence[object]], *,
            actual_columns: Sequence[str] | None = None, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL,
            avg_rel_tol: float = AVG_REL_TOL, max_messages: int = 50) -> list[str]:
    """Mismatches between an engine's answer to query ``n`` and the expected one; ``[]`` if they agree.

    Each message names the query, row (from 1) and column: ``"Q05 row 3 column revenue: 1234.5 != 1234.6"``
    (actual != expected). Numbers are compared with ``rel_tol`` plus ``abs_tol`` (``avg_rel_tol`` for
    averages and ratios), integers exactly, dates and date strings by their ISO form. Rows whose ORDER BY
    keys are equal may come in any order; when LIMIT cuts through a run of equal keys, only the keys of
    that run are compared. Row counts are compared, and ``actual_columns`` (e.g. ``df.columns``), when
    given, must equal the specification's output columns.
    """
    if n not in SPECS:
        raise UsageError(f"no TPC-H query {n!r}", hint="queries are numbered 1..22")
    spec = SPECS[n]
    comparer = _Comparer(spec, rel_tol, abs_tol, avg_rel_tol, max_messages)
    if actual_columns is not None and list(actual_columns) != list(spec.columns):
        comparer.say(f"columns: {list(actual_columns)} != {list(spec.columns)}")
    actual = [tuple(_norm(v) for v in row) for row in actual_rows]
    expected = [tuple(_norm(v) for v in row) for row in expected_rows]
    return comparer.run(actual, expected)
