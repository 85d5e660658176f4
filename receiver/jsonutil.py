"""JSON in and out, through orjson.

Every callback is parsed once at intake and again by the pipeline, and its headers, the
outbox payloads and every log line are encoded: with the standard library that was a tenth
of the intake's CPU. orjson is several times faster; the rare document it refuses is read by
the standard library, which accepts a little more (see :func:`loads`).

Where orjson cannot encode a value that the standard library can (integers beyond 64 bits,
strings with lone surrogates, which may come from a client's JSON), the encoders fall back to
the standard library, so nothing that used to encode fails now.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from receiver.store.storable import renderable

JSONDecodeError = orjson.JSONDecodeError  # a ValueError (json.JSONDecodeError)


def loads(data: bytes | str) -> Any:
    """Parse a JSON document; raises :class:`ValueError` (or ``RecursionError``) if invalid.

    What orjson refuses goes to the standard library's parser, so that what it accepted
    still is: a UTF-8 byte-order mark, UTF-16/32 bytes, NaN, lone surrogates. One difference
    remains: orjson reads an integer beyond 64 bits as a float (the raw bytes are stored
    as they came, and no provider field we read is such a number)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> str:
    """Compact JSON with sorted keys, as stored in the database (anything else via ``str``)."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def dumps_bytes(value: Any, *, default: Any = None) -> bytes:
    """Compact JSON as bytes, keys in their given order (HTTP bodies, log lines)."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), default=default).encode()


def loads_object(text: str | bytes | None) -> dict[str, Any]:
    """A stored JSON object (metadata, defaults, headers); ``{}`` for what is not one.

    Stored text is read back whatever it holds, so that no row can break a view or the
    pipeline: what orjson refuses (a lone-surrogate escape, deep nesting) goes to the
    standard library, and what that refuses too reads as ``{}``."""
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return {}
    return value if isinstance(value, dict) else {}


def dumps_view(value: Any) -> bytes:
    """JSON for an answer that shows stored data: never fails on what a row may hold.

    orjson writes NaN and infinities as null. What it refuses (an integer beyond 64 bits,
    text with a lone surrogate, nesting past its limit) is made renderable first
    (:func:`receiver.store.storable.renderable`) and written by the standard library."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(renderable(value), separators=(",", ":"), allow_nan=False).encode()
