"""One base exception for signback; each subclass's docstring is its default message."""

from __future__ import annotations

from collections.abc import Mapping


class SignbackError(Exception):
    """Something went wrong in signback."""

    def __init__(self, message: str | None = None) -> None:
        # A docstring wrapped over lines reads as one sentence, without its indentation.
        super().__init__(message or " ".join((self.__doc__ or "").split()))

    @property
    def message(self) -> str:
        return str(self)


class ConfigurationError(SignbackError):
    """signback is not configured correctly; see the README's configuration table."""


class SchemaNotCurrent(SignbackError):
    """schema is not current: run signback migrate"""


class CallbackRejected(SignbackError):
    """The callback was refused."""

    status_code = 400

    def __init__(
        self,
        reason: str,
        status_code: int | None = None,
        *,
        details: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(reason)
        if status_code is not None:
            self.status_code = status_code
        # Facts that explain the refusal to an operator (the rejection log, the console):
        # e.g. a signature's timestamp skew and how many secrets were tried. Never a secret,
        # a signature or a token: they are stored and shown as they are.
        self.details: Mapping[str, object] = details or {}


class SignatureInvalid(CallbackRejected):
    """The callback's signature could not be verified."""

    status_code = 401


class InvalidAction(SignbackError):
    """A business rule produced an action the provider would refuse; it was not sent."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, for a log line or a command's error message
    (database drivers' messages run to several lines, SQLAlchemy's add a link)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
