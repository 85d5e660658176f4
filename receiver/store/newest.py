"""Newest-first pages that each database reads through an index, whatever the filter.

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

from collections.abc import Sequence


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
