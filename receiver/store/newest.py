"""Newest-first pages that each database reads through an index, whatever the filter, and
the search that maps a time to an id (:func:`first_ids_at`, console and admin lists alike).

A page of ``ORDER BY id DESC LIMIT n`` under a filter is quick two ways: through an index
that leads with the filter's columns and ends with ``id`` (it stops after n entries), or
along the primary key when the matching rows are dense. When the index leads with the
filter but has another column before ``id`` (``(provider, state, id)`` asked for a
provider alone), the planners fell between the two: SQLite read all the provider's rows
and sorted them, PostgreSQL walked the primary key, filtering, to the end of the table when
the rows were rare (seconds on a million requests). :func:`newest_first` asks one branch
per value of that middle column, each an index range stopped at n, and merges them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from receiver.store.db.base import Database


def newest_ids(table: str, branches: Sequence[str]) -> str:
    """The ids of the ``:limit`` newest rows of ``table`` that match one of ``branches``
    (WHERE clauses picking disjoint rows), each branch read newest first and cut at
    ``:limit`` on its own."""
    if len(branches) == 1:
        return f"SELECT id FROM {table} WHERE {branches[0]} ORDER BY id DESC LIMIT :limit"
    parts = [
        f"SELECT id FROM (SELECT id FROM {table} WHERE {where} ORDER BY id DESC"
        f" LIMIT :limit) AS b{i}"
        for i, where in enumerate(branches)
    ]
    return f"SELECT id FROM ({' UNION ALL '.join(parts)}) AS merged ORDER BY id DESC LIMIT :limit"


def newest_first(table: str, columns: str, branches: Sequence[str]) -> str:
    """The rows of :func:`newest_ids`, newest first. The ids come first, from the indexes
    alone, and then their rows: asked for whole rows at once, PostgreSQL preferred to walk
    the primary key and filter (receiver/console/queries.py ``_ids_first``)."""
    return (
        f"SELECT {columns} FROM {table} WHERE id IN ({newest_ids(table, branches)})"
        " ORDER BY id DESC"
    )


def number_or_none(value: object) -> float | None:
    """A stored time as a number; None for one that is not (text in an SQLite column)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


async def first_ids_at(
    db: Database, table: str, column: str, moments: Sequence[float], *, fan: int = 8
) -> list[int]:
    """For each moment, the first id whose ``column`` (a time that grows with the id) is at
    or after it (``MAX(id) + 1`` when none is). A search over the primary key for all the
    moments together, ``fan`` probes per moment and step: each step is one statement of
    primary-key probes, and a table of millions takes about seven."""
    # Two subqueries: SQLite reads MIN or MAX alone from the index's end, but scans the
    # whole table for both in one SELECT.
    bounds = await db.fetch_one(
        f"SELECT (SELECT MIN(id) FROM {table}) AS lo, (SELECT MAX(id) FROM {table}) AS hi"
    )
    if bounds is None or bounds["lo"] is None:
        return [1 for _ in moments]
    low = [int(bounds["lo"])] * len(moments)
    high = [int(bounds["hi"]) + 1] * len(moments)
    while True:
        probes: dict[str, int] = {}
        for i, (lo, hi) in enumerate(zip(low, high, strict=True)):
            if lo < hi:
                points = sorted({lo + (hi - lo) * k // (fan + 1) for k in range(1, fan + 1)})
                probes.update({f"p{i}_{n}": point for n, point in enumerate(points)})
        if not probes:
            return low
        # One subquery over a list of probes (not one subquery per probe: PostgreSQL
        # plans each of those apart, which took longer than running them).
        names = list(probes)
        listed = ", ".join(f"({n}, :{name})" for n, name in enumerate(names))
        rows = await db.fetch_all(
            f"SELECT p.column1 AS k, (SELECT {column} FROM {table} WHERE id >= p.column2"
            f" ORDER BY id LIMIT 1) AS t FROM (VALUES {listed}) AS p",
            probes,
        )
        row = {names[int(r["k"])]: r["t"] for r in rows}
        for i, (lo, hi) in enumerate(zip(low, high, strict=True)):
            if lo >= hi:
                continue
            # The answer is above each probe whose first row is older than the moment, and
            # at or below the first probe whose first row is not (or that has no row at or
            # after it): narrow [lo, hi) to that gap. Probes lie in [lo, hi), so it shrinks.
            new_lo, new_hi = lo, hi
            for n in range(fan):
                name = f"p{i}_{n}"
                if name not in probes:
                    break
                seen = row.get(name)
                if seen is None or (number_or_none(seen) or float("-inf")) >= moments[i]:
                    new_hi = probes[name]
                    break
                new_lo = probes[name] + 1
            low[i], high[i] = new_lo, new_hi
