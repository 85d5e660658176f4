"""structlog set-up: JSON lines when not on a terminal, readable lines on one.

Every line logged while serving an HTTP request carries that request's ``request_id``
(set with :func:`set_request_id` by :mod:`receiver.intake.middleware` and
:mod:`receiver.intake.router`).
A last-line-of-defence processor masks values of keys that look like secrets, so a careless
``log.info(..., token=t)`` cannot leak one.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

from receiver import jsonutil

# A run of URL-safe characters long enough to be a credential: callback tokens are 43 of
# them (base64url of 32 random bytes), hex digests and UUIDs are similar.
_LONG_RUN = re.compile(r"[A-Za-z0-9_-]{16,}")


# CamelCase words (``OperationalError``, ``ConnectionResetError``): upper and lower case,
# yet no token.
_CAMEL_WORDS = re.compile(r"(?:[A-Z][a-z]+)+")


def _looks_random(run: str) -> bool:
    """Letters mixed with digits, or upper with lower case: what random strings look like
    and what words, numbers, ``snake_case`` and ``CamelCase`` names do not."""
    if _CAMEL_WORDS.fullmatch(run):
        return False
    digit = upper = lower = False
    for char in run:
        if char.isdigit():
            digit = True
        elif char.isupper():
            upper = True
        elif char.islower():
            lower = True
    return (digit and (upper or lower)) or (upper and lower)


def redact_tokens(text: str) -> str:
    """``text`` (a path, a URL, a log message) with every token-shaped run replaced, wherever
    it stands: callback tokens must not reach a log, whatever path they came in on."""
    return _LONG_RUN.sub(lambda m: "[token]" if _looks_random(m.group()) else m.group(), text)


def shown(value: object) -> object:
    """A stored value for a view: text with token-shaped runs cut out (rows written before
    the attempt log was redacted at the source), anything else as it is."""
    return redact_tokens(value) if isinstance(value, str) else value


class RedactTokens(logging.Filter):
    """For loggers signback does not write itself (uvicorn's access and error logs): the
    message and its arguments with token-shaped runs replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_tokens(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


# Free-text values of a log line that may quote what a provider, an HTTP library or an
# exception said (a URL with a token in it, or an echo of a request that carried one), and
# URLs themselves (an endpoint's may carry a credential in its query). Paths are cut where
# they are logged (receiver.intake.middleware.loggable_path).
_FREE_TEXT_KEYS = frozenset(
    {"error", "reason", "exception", "message", "detail", "response", "url", "public_url"}
)


def _redact_free_text(event_dict: MutableMapping[str, Any]) -> None:
    for key in _FREE_TEXT_KEYS.intersection(event_dict):
        value = event_dict[key]
        if isinstance(value, str):
            event_dict[key] = redact_tokens(value)


def _redact_free_text_step(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    _redact_free_text(event_dict)
    return event_dict


_SECRET_WORDS = ("token", "secret", "api_key", "apikey", "signature", "password", "authorization")
_ALLOWED = frozenset({"request_id", "token_hint"})


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return lowered not in _ALLOWED and any(word in lowered for word in _SECRET_WORDS)


def _mask_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in event_dict:
        if _is_secret_key(key):
            event_dict[key] = "[redacted]"
    return event_dict


# The request being served, if any. A plain ContextVar rather than structlog's
# merge_contextvars, which walks every context variable of the task on every line.
_request_id: ContextVar[str | None] = ContextVar("signback_request_id", default=None)


def set_request_id(request_id: str | None) -> None:
    """Tag the current task's log lines with ``request_id`` (None stops tagging)."""
    _request_id.set(request_id)


def _add_request_id(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    request_id = _request_id.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


_LEVELS = {"warn": "warning", "exception": "error"}
_stamp_second = -1
_stamp_prefix = ""


def _utc_stamp() -> str:
    """ISO 8601 UTC with microseconds, like structlog's TimeStamper("iso", utc=True), but
    the date part is formatted once per second: this runs for every line."""
    global _stamp_second, _stamp_prefix
    now = time.time()
    second = int(now)
    if second != _stamp_second:
        _stamp_second = second
        _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_stamp_prefix}.{int((now - second) * 1_000_000):06d}Z"


def _render_json(_: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    """The JSON line in one step: request id, level, timestamp, masking and rendering.

    One processor instead of five, because every accepted callback logs a line and the
    chain's per-step overhead was a visible share of the intake's CPU."""
    request_id = _request_id.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    event_dict["level"] = _LEVELS.get(method_name, method_name)
    event_dict["timestamp"] = _utc_stamp()
    for key in event_dict:
        if _is_secret_key(key):
            event_dict[key] = "[redacted]"
    if "exc_info" in event_dict:
        event_dict = structlog.processors.format_exc_info(_, method_name, event_dict)
    _redact_free_text(event_dict)
    return jsonutil.dumps_bytes(event_dict, default=repr).decode()


class _JsonRecords(logging.Formatter):
    """Lines from loggers signback does not write itself (uvicorn's "Started server
    process", "Waiting for application shutdown", an error it logs) as JSON like every
    other line, so that a log collector reading JSON never meets a plain-text line."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {"event": redact_tokens(record.getMessage()), "logger": record.name}
        if record.exc_info:
            event["exc_info"] = record.exc_info
        return _render_json(None, record.levelname.lower(), event)


class _StderrLines:
    """The end of the logging chain: each rendered line to whatever ``sys.stderr`` is at
    the time (test capture, redirections). structlog's PrintLogger does the same through
    ``print()`` under a lock with an explicit flush, a tenth of the cost of a log line;
    ``sys.stderr`` is line-buffered, and one ``write()`` per line keeps lines whole."""

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _stderr_lines(*_: Any) -> _StderrLines:
    return _StderrLines()


_debug_enabled = False


def debug_enabled() -> bool:
    """Whether DEBUG lines are written: hot paths ask before building one."""
    return _debug_enabled


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    global _debug_enabled
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    processors: list[Any] = (
        [_render_json]
        if use_json
        else [
            _add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            structlog.processors.format_exc_info,
            _redact_free_text_step,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ]
    )
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    _debug_enabled = numeric_level <= logging.DEBUG
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=_stderr_lines,
        cache_logger_on_first_use=True,
    )
    # uvicorn's own access log prints raw paths, and our callback paths carry secrets:
    # it is switched off where uvicorn is started; keep its error log at our level.
    logging.basicConfig(level=numeric_level, stream=sys.stderr, format="%(message)s")
    for handler in logging.getLogger().handlers:
        # basicConfig's own handler (a test runner's capture handlers are subclasses).
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(_JsonRecords() if use_json else logging.Formatter("%(message)s"))
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn.access", "uvicorn.error"):  # should anyone turn them on again
        uvicorn_log = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in uvicorn_log.filters):
            uvicorn_log.addFilter(RedactTokens())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # httpx logs full URLs at INFO
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl …" on every start
    # psycopg's pool logs every failed connection attempt in two lines; signback says once
    # that the database is unreachable (at start, in /readyz, from the worker's loops).
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
