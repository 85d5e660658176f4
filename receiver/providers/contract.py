"""What a provider package (``handlers/<name>``) plugs into the core.

A provider says how to verify and key a callback at intake, how to normalize a stored
callback into a :class:`~receiver.events.NormalizedEvent` (pure), which outbound operations
it offers to the outbox, and which callback routes it serves. The pipeline around them is written
once, in ``receiver``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from receiver.events import NormalizedEvent
from receiver.model import Action, SignatureRequest

if TYPE_CHECKING:
    from receiver.context import AppContext
    from receiver.intake.router import Hook
    from receiver.pipeline.registration import Registration


@dataclass(frozen=True, slots=True)
class StoredCallback:
    """A callback as the inbox keeps it: the raw bytes plus where and when it came in."""

    inbox_id: int
    provider: str
    channel: str  # "sendinfo", "return", "webhook", or "confirmation" (made by signback)
    body: bytes  # the raw body, exactly as received
    headers: Mapping[str, str]  # lower-cased names, secrets already redacted
    query: str  # the raw query string ("" when none)
    request_id: int | None  # set when the URL itself named the request (OKdokument tokens)
    received_at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class FollowUpEvent:
    """An event an operation learned about (e.g. a confirmed state), fed back to the inbox."""

    provider: str
    channel: str
    body: bytes
    dedupe_key: str
    request_id: int | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt at an outbox action ended. The retry policy decides what follows."""

    ok: bool
    status_code: int | None = None  # the provider's HTTP status; None when no answer came
    message: str = ""  # the provider's own error text, or what went wrong on our side
    retry_after: float | None = None  # seconds the provider asked us to wait (429/503)
    final: bool = False  # True: do not retry whatever the status (e.g. invalid payload)
    skipped: bool = False  # True: deliberately not sent (message says why)
    # True: not attempted yet (e.g. our own rate limit); comes back after ``retry_after``
    # seconds without counting as an attempt.
    deferred: bool = False
    response_excerpt: str = ""  # the first bytes of the answer, for the attempt log
    follow_up: Sequence[FollowUpEvent] = ()

    @property
    def throttled(self) -> bool:
        """The provider asked us to slow down: a 429, or a 503 that says when to come back.

        That is no failure of the action: it waits as asked and the attempt does not count
        toward the ones that make an action dead (receiver/outbox/retry.py). A 503 without
        ``Retry-After`` may be an outage, and is retried (and counted) like other 5xx.
        """
        return not self.ok and (
            self.status_code == 429 or (self.status_code == 503 and self.retry_after is not None)
        )


class Operation(Protocol):
    """One kind of outbound call, e.g. "okdokument.patch_signature_request"."""

    async def __call__(
        self, ctx: AppContext, request: SignatureRequest, payload: Mapping[str, Any]
    ) -> Outcome: ...


@dataclass(frozen=True)
class Provider:
    """Everything the core needs from one provider package."""

    name: str
    normalize: Callable[[StoredCallback], NormalizedEvent]
    # The provider's callback routes under /hooks/ (served by receiver.intake.router's fast path).
    hooks: Callable[[AppContext], Sequence[Hook]]
    operations: Mapping[str, Operation] = field(default_factory=dict)
    # Checks a registration's provider defaults; raises InvalidAction with a clear message.
    validate_defaults: Callable[[Mapping[str, Any]], None] | None = None
    # What this provider needs of a registration: (field, message) for each problem.
    check_registration: Callable[[Registration], Sequence[tuple[str, str]]] | None = None
    # The action that points a still-open request's callback URLs at signback's current
    # public URL (None: nothing to re-point for it). ``key`` is the action key to use.
    repoint: Callable[[SignatureRequest, str], Action | None] | None = None
    # The action that gives the provider this request's own sendInfo URL and changes nothing
    # else, for requests registered before that URL had a token of its own (see
    # receiver/pipeline/sendinfo_split.py). None: the provider has no sendInfo callback.
    point_sendinfo: Callable[[SignatureRequest, str], Action] | None = None
    # Called once at start-up with the app context; returns a closer (for HTTP clients).
    start: Callable[[AppContext], Awaitable[Callable[[], Awaitable[None]]]] | None = None
