"""What the schema can hold, and what a view can render.

Text from outside can hold two things no column can: a NUL character (PostgreSQL's text types
refuse it) and a lone UTF-16 surrogate, which JSON's ``"\\ud800"`` escape puts into a Python
string and which no UTF-8 encoder accepts (SQLite's and psycopg's both raise). And a value
longer than its ``String(n)`` column fails on PostgreSQL (SQLite does not check).

Two answers, used in two places:

- what a person sends us (the admin API) is *refused* with the reason
  (:func:`text_problem`, :func:`json_problem`);
- what a provider sent and we already acknowledged is *kept*: the facts the pipeline writes
  about it go through :func:`storable`, which escapes what cannot be stored and cuts what is
  too long, so that every acknowledged callback can be processed.
"""

from __future__ import annotations

import math
from typing import Any

CUT_MARKER = "…"  # ends a value cut to its column's size
# An int of more than 64 bits cannot be stored by either database (or read back by orjson).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_JSON_DEPTH = 32  # metadata and defaults: objects nested deeper are refused


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as it is, or None."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates such as \\ud800)"
    return None


def storable(text: str, limit: int | None = None) -> str:
    """``text`` as any column can hold it: NUL written as ``\\x00``, each lone surrogate as
    its ``\\udXXX`` escape, and at most ``limit`` characters (a longer value is cut and ends
    with ``…``). Text that needs none of this comes back as it is."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if limit is not None and len(text) > limit:
        text = text[: limit - len(CUT_MARKER)] + CUT_MARKER
    return text


def storable_or_none(text: str | None, limit: int | None = None) -> str | None:
    return None if text is None else storable(text, limit)


def json_problem(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a parsed JSON value cannot be stored and shown again exactly, or None: text that
    :func:`text_problem` refuses (keys too), integers beyond 64 bits, NaN or infinities,
    or more than ``max_depth`` levels of nesting."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return f"text {problem}"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                return "integers must fit in 64 bits"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "numbers must be finite (no NaN or Infinity)"
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return f"must not be nested more than {max_depth} levels deep"
            if isinstance(item, dict):
                pending.extend((key, depth + 1) for key in item)
                pending.extend((child, depth + 1) for child in item.values())
            else:
                pending.extend((child, depth + 1) for child in item)
        else:
            return f"unexpected value of type {type(item).__name__}"
    return None


def renderable(value: Any, *, max_depth: int = 64) -> Any:
    """A copy of a stored JSON-like value that any JSON encoder takes and any client can
    decode: text through :func:`storable`, non-finite numbers as None, integers past a
    double's range as their digits in text, bytes (SQLite lets
    any column hold a blob) decoded as UTF-8 with replacements, anything nested deeper than
    ``max_depth`` as the text ``"[nested too deep]"``, and any other object as its ``str``.
    For views of rows stored before their values were checked."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return storable(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list) and max_depth <= 0:
        return "[nested too deep]"
    if isinstance(value, dict):
        return {
            storable(str(key)): renderable(child, max_depth=max_depth - 1)
            for key, child in value.items()
        }
    if isinstance(value, list | tuple):
        return [renderable(child, max_depth=max_depth - 1) for child in value]
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1023:
        # Past a double's range: a client's parser reads it as infinity or refuses it. Its
        # digits as text (Python's str() refuses more than 4,300 of them).
        return storable(str(value)) if value.bit_length() < 14_000 else "[number too large]"
    if value is None or isinstance(value, bool | int | float):
        return value
    return storable(str(value))
