"""structlog set-up: JSON lines when not on a terminal, readable lines on one.

Every line logged while serving an HTTP request carries that request's ``request_id``
(bound in :mod:`receiver.middleware`). A last-line-of-defence processor masks values of
keys that look like secrets, so a careless ``log.info(..., token=t)`` cannot leak one.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

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


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time (test capture, redirections)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    # uvicorn's own access log prints raw paths, and our callback paths carry secrets:
    # it is switched off where uvicorn is started; keep its error log at our level.
    logging.basicConfig(level=numeric_level, stream=sys.stderr, format="%(message)s")
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # httpx logs full URLs at INFO
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl …" on every start


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
