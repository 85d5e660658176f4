"""Which header values never reach the database or a log line.

The core's own list (credentials of any kind) plus each installed provider's secret headers
(its signature headers: ``Provider.secret_headers``), each with what is kept of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from receiver.providers.contract import SecretHeader

# Header names whose values never reach the database or a log line, whatever the provider;
# each provider adds its own (its signature headers: Provider.secret_headers).
SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "x-api-key", "proxy-authorization", "set-cookie"}
)
REDACTED = "[redacted]"


def _redacted(_: str) -> str:
    return REDACTED


class HeaderRedaction:
    """What is kept of each header: the core's secret headers and every installed
    provider's, by name (one dict lookup per header) or by pattern (numbered signature
    headers; one match per header, only when some provider declares a pattern)."""

    def __init__(self, headers: Iterable[SecretHeader] = ()) -> None:
        self._by_name: dict[str, Callable[[str], str]] = dict.fromkeys(SECRET_HEADERS, _redacted)
        patterns: list[tuple[re.Pattern[str], Callable[[str], str]]] = []
        for header in headers:
            redact = header.redact or _redacted
            if header.is_pattern:
                patterns.append((re.compile(header.name), redact))
            else:
                self._by_name[header.name] = redact
        self._patterns = tuple(patterns)
        self._any_pattern = (
            re.compile("|".join(f"(?:{p.pattern})" for p, _ in patterns)) if patterns else None
        )

    def __call__(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Lower-cased headers, secrets replaced by what their redactor keeps."""
        kept: dict[str, str] = {}
        by_name = self._by_name
        for name, value in headers.items():
            lowered = name.lower()
            redact = by_name.get(lowered)
            if redact is None and self._any_pattern is not None:
                redact = self._by_pattern(lowered)
            kept[lowered] = value[:1000] if redact is None else redact(value)
        return kept

    def _by_pattern(self, name: str) -> Callable[[str], str] | None:
        assert self._any_pattern is not None
        if self._any_pattern.fullmatch(name) is None:
            return None
        return next(redact for pattern, redact in self._patterns if pattern.fullmatch(name))


CORE_REDACTION = HeaderRedaction()


def redact_headers(
    headers: Mapping[str, str], redaction: HeaderRedaction = CORE_REDACTION
) -> dict[str, str]:
    """Lower-cased headers with credentials removed (``redaction``: the installed
    providers' too, ``ctx.redaction``)."""
    return redaction(headers)
