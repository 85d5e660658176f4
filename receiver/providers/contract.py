"""What a provider package (``handlers/<name>``) plugs into the core.

A provider package exposes one :class:`ProviderPackage` (``PROVIDER``), found by the registry
(:mod:`receiver.providers.registry`). It names the provider, its settings class (own prefix,
e.g. ``SIGNBACK_ACME_``), its rules module and its CLI commands, and builds, from its
settings, the :class:`Provider` the running service uses: how a callback is verified and
keyed at intake (declarative :class:`HookSpec`, the shared steps being the core's), how a
stored callback is normalized (pure), how the signer's browser return is read, which
headers are secrets, which callback URLs a request gets, which outbound operations the
outbox can run and the client they use. The pipeline around them is written once, in
``receiver``, and names no provider. docs/architecture.md ("Adding a provider") is the
checklist.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from receiver.events import NormalizedEvent
from receiver.intake.router import Answer
from receiver.model import Action, SignatureRequest
from receiver.settings import ProviderSettings, http_base_url

if TYPE_CHECKING:
    import click

    from receiver.context import AppContext
    from receiver.intake.router import Callback
    from receiver.outbox.outcomes import Outcome
    from receiver.pipeline.registration import Registration


@dataclass(frozen=True, slots=True)
class StoredCallback:
    """A callback as the inbox keeps it: the raw bytes plus where and when it came in."""

    inbox_id: int
    provider: str
    # The hook's channel ("webhook", …), "return" (the signer's browser), or one a provider's
    # operation feeds back (what the provider's API said about a claim, say).
    channel: str
    body: bytes  # the raw body, exactly as received
    headers: Mapping[str, str]  # lower-cased names, secrets already redacted
    query: str  # the raw query string ("" when none)
    request_id: int | None  # set when the URL itself named the request (a hook token)
    received_at: float  # unix seconds


class Operation(Protocol):
    """One kind of outbound call, named ``<provider>.<verb>`` (e.g. "acme.patch_request")."""

    async def __call__(
        self, ctx: AppContext, request: SignatureRequest, payload: Mapping[str, Any]
    ) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class Reading:
    """What a provider's API answered about one request's real state (the reconciler's
    read): the answer's bytes, untouched, and the state in the provider's own words."""

    body: bytes  # stored as the inbox row's body (channel "reconcile"), normalized later
    # The provider's state ("finished", "signed", "in_progress:1" …): with the request, the
    # finding's dedupe key, so that reading the same state twice stores it once.
    state: str
    status_code: int = 200  # the answer's status, for the attempt log


# Reads the provider's real state of one request (never trusting anything a callback said:
# a provider's own id of the request, or the document registered with it). Returns the
# Reading, or an Outcome for a read that did not happen or failed (Deferred while its rate
# budget has no slot, Throttled on a 429, Failed, GiveUp, Skipped). Takes a slot of the
# provider's read budget first, the one its operations share.
ReconcileRead = Callable[["AppContext", SignatureRequest], Awaitable["Reading | Outcome"]]


# Settings: ProviderSettings (the base of a provider's settings class, with its own env
# prefix) and http_base_url (a base-URL validator) live beside the core's settings, in
# receiver.settings, and are re-exported here.


# --------------------------------------------------------------------------------------------
# Intake: declarative hooks


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a hook's ``verify`` found in a genuine callback: what the inbox row is keyed and
    matched by."""

    dedupe_key: str  # unique per provider: a retry of the same callback must give the same
    external_id: str | None  # the provider's id of the request, for matching
    request_id: int | None = None  # signback's id, when the URL named the request
    # A few ids for the log lines (never a secret; not "provider" or "channel").
    log_facts: Mapping[str, Any] = field(default_factory=dict)


# (callback, raw body, found) → Accepted, or raise CallbackRejected (a 4xx with its reason).
# ``found`` is the request row for a ``{hook_token}`` route, what ``resolve`` returned for
# another ``{name}`` route, and None for a route without a parameter. Runs on the event
# loop for every callback: keep it quick and synchronous.
Verify = Callable[["Callback", bytes, Any], Accepted]


@dataclass(frozen=True, slots=True)
class MediaTypes:
    """The content types a hook accepts; anything else is a 415, before the body is read."""

    accepted: tuple[str, ...] = ("application/json",)
    suffixes: tuple[str, ...] = ()  # e.g. ("+json",) for application/vnd.acme+json
    required: bool = True  # False: a callback without Content-Type is let through

    def problem(self, content_type: str | None) -> str | None:
        """Why ``content_type`` is refused, or None."""
        if content_type is None and not self.required:
            return None
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media in self.accepted or (media and self.suffixes and media.endswith(self.suffixes)):
            return None
        return f"content type must be {self.accepted[0]}, not {media or 'missing'!r}"


JSON_BODY = MediaTypes()


@dataclass(frozen=True, slots=True)
class Ack:
    """The answers to a stored callback: new, and duplicate."""

    accepted: Answer
    duplicate: Answer

    @classmethod
    def text(cls, body: str, content_type: str = "text/plain; charset=utf-8") -> Ack:
        """The same exact body for both (e.g. Dropbox Sign's ``Hello API Event Received``)."""
        answer = Answer.text(200, body, content_type)
        return cls(answer, answer)


JSON_ACK = Ack(Answer.json(200, {"status": "accepted"}), Answer.json(200, {"status": "duplicate"}))

HOOK_TOKEN = "hook_token"  # noqa: S105  # the path parameter the core resolves to a request


@dataclass(frozen=True, slots=True)
class HookSpec:
    """One callback route of a provider, under ``/hooks/<provider>``.

    The core owns the shared steps (receiver/intake/hooks.py): POST only (405), the request
    of a ``{hook_token}`` (404 unknown), the media type (415), a bounded body (413), then
    ``verify``, then store, acknowledge, log and count; every refusal is a JSON
    ``{"error": reason}``.
    """

    # "/hooks/<provider>", "/hooks/<provider>/{hook_token}" (the request's own URL: the
    # core looks the token up) or "/hooks/<provider>/{name}" (see ``resolve``).
    path: str
    channel: str  # stored with each callback, e.g. "webhook"
    verify: Verify
    media_types: MediaTypes = JSON_BODY
    ack: Ack = JSON_ACK
    # For a ``{name}`` other than ``{hook_token}``: the segment → what ``verify`` gets as
    # ``found``; raises CallbackRejected (e.g. 404 for an unknown workspace). Runs first.
    resolve: Callable[[str], Any] | None = None
    keep_query: bool = True  # store the query string (cut to 4096 characters) with the row
    # Facts for the log line of a refusal (e.g. an event type header); never a secret.
    refusal_facts: Callable[[Callback], Mapping[str, Any]] | None = None

    @property
    def parameter(self) -> str | None:
        last = self.path.rpartition("/")[2]
        return last[1:-1] if last.startswith("{") and last.endswith("}") else None


@dataclass(frozen=True, slots=True)
class SecretHeader:
    """A header whose value never reaches the database or a log line."""

    # A lower-case header name, or a regular expression matching whole lower-case names
    # (``x-acme-signature-\\d+`` for numbered signature headers).
    name: str
    # What is kept of the value (e.g. a signature's timestamp); default "[redacted]".
    redact: Callable[[str], str] | None = None

    @property
    def is_pattern(self) -> bool:
        return re.fullmatch(r"[a-z0-9-]+", self.name) is None


# --------------------------------------------------------------------------------------------
# Browser returns and callback URLs


@dataclass(frozen=True, slots=True)
class ReturnFacts:
    """What the signer's browser said on ``/return/<token>``: recorded, never trusted."""

    result: str | None = None  # how the visit ended in the provider's words ("close", …)
    retry: bool = False  # send the browser to the request's retry_url (when it has one)
    occurred_at: float | None = None  # plausible unix seconds, or None
    # Small facts rules may read ({"result": "close"}): values of at most a few hundred
    # characters (they are stored with the event).
    details: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, str] = field(default_factory=dict)  # every query parameter, as sent


URL_FIELDS = frozenset({HOOK_TOKEN, "return_token"})
# Every request's signer comes back here; a provider adds its own URLs beside it.
RETURN_URL = "/return/{return_token}"
PLACEHOLDER_PREFIX = "{signback."


def placeholder(name: str) -> str:
    """``{signback.<name>}``: filled in at send time with the request's URL of that name."""
    return f"{PLACEHOLDER_PREFIX}{name}}}"


# --------------------------------------------------------------------------------------------
# Documents: what the archive (receiver/archive/) downloads for a completed request

_DOCUMENT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,79}")


@dataclass(frozen=True, slots=True)
class DocumentRef:
    """One file a provider keeps for a completed request, to be archived."""

    # The file's name in the archive, unique per request: lower-case letters, digits, ".",
    # "_", "-" (e.g. "signed.pdf", "audit-trail.json"). Also its name in the API's URLs.
    name: str
    kind: str  # "signed" (the signed document), or evidence ("audit_trail", "certificate")
    media_type: str = "application/pdf"  # a PDF is checked to start with %PDF-
    locator: str = ""  # the provider's own handle for it, handed back to ``fetch``

    def __post_init__(self) -> None:
        if not _DOCUMENT_NAME.fullmatch(self.name) or ".." in self.name:
            raise ValueError(f"a document name is [a-z0-9._-], not {self.name!r}")


class DocumentNotReady(Exception):
    """Raised by a :class:`DocumentSource`'s ``fetch`` when there is nothing to download now.

    ``outcome`` is what the archive action reports: ``Throttled`` for a provider that says
    when to come back (a ``503`` with ``Retry-After`` while the PDF is being generated: not
    counted as an attempt), ``Deferred`` for our own rate budget, ``Failed`` for an error that
    may pass, ``GiveUp`` for one that cannot (the document is gone)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message or f"HTTP {outcome.status_code}")
        self.outcome = outcome


class DocumentMissing(Exception):
    """Raised by ``fetch`` when the provider has no such file for this request and never
    will (evidence it does not keep, or that the key may not read): the archive goes on
    with the other files, and the action says which one was missing."""


# (ctx, request, ref) → an async context manager giving the file's bytes in chunks. It
# takes the provider's rate-budget slots, fetches a fresh link when a link has expired, and
# raises DocumentNotReady (or httpx's transport errors) when there is nothing to stream.
DocumentFetch = Callable[
    ["AppContext", SignatureRequest, DocumentRef],
    AbstractAsyncContextManager[AsyncIterator[bytes]],
]


@dataclass(frozen=True)
class DocumentSource:
    """How a provider's final documents are fetched; the archive (receiver/archive/) does
    the rest (streaming to storage, checksums, the record, the event), for every provider."""

    # The files a completed request has at this provider (none: nothing to archive, e.g. a
    # request registered without the provider's document id). Pure and quick.
    documents: Callable[[AppContext, SignatureRequest], Sequence[DocumentRef]]
    fetch: DocumentFetch
    # Actions to queue once every file of the request is archived (e.g. deleting the
    # provider's copy); keyed, so they are queued once.
    after_archive: Callable[[AppContext, SignatureRequest], Sequence[Action]] | None = None


# --------------------------------------------------------------------------------------------
# The provider at run time, and the package that builds it


class ProviderClient(Protocol):
    """What the core needs of a provider's client (usually a ProviderHttpClient, whose
    credentials are fixed headers or an async callable awaited for each call's own)."""

    async def aclose(self) -> None: ...


_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class Provider:
    """Everything the running core needs from one provider (built from its settings)."""

    name: str  # lower-case; the /hooks/<name> prefix, the operations' prefix, a metrics label
    normalize: Callable[[StoredCallback], NormalizedEvent]
    # Its callback routes, or a function of the app context that gives them (for a hook
    # that needs the app's clock, say).
    hooks: Sequence[HookSpec] | Callable[[AppContext], Sequence[HookSpec]] = ()
    # Callback URLs (name → path under the public URL) a request of this provider gets
    # besides ``return_url``, with ``{hook_token}``/``{return_token}`` in them; each is the
    # placeholder ``{signback.<name>}`` in action payloads and in the API's callback_urls.
    urls: Mapping[str, str] = field(default_factory=dict)
    # The signer's browser on /return/<token> (query string → facts); None: nothing is read.
    parse_return: Callable[[str], ReturnFacts] | None = None
    secret_headers: Sequence[SecretHeader] = ()
    operations: Mapping[str, Operation] = field(default_factory=dict)
    # The outbound client, built at start (None: not configured, e.g. no API key); stored in
    # ``ctx.clients[name]`` for the operations and closed at shutdown.
    client: Callable[[AppContext], ProviderClient | None] | None = None
    # Checks a registration's provider defaults; raises InvalidAction with a clear message.
    validate_defaults: Callable[[Mapping[str, Any]], None] | None = None
    # What this provider needs of a registration: (field, message) for each problem.
    check_registration: Callable[[Registration], Sequence[tuple[str, str]]] | None = None
    # The action that points a still-open request's callback URLs at signback's current
    # public URL (None: nothing to re-point for it). ``key`` is the action key to use.
    repoint: Callable[[SignatureRequest, str], Action | None] | None = None
    # The action that gives the provider this request's own hook-token URL and changes
    # nothing else, for requests registered before that URL had a token of its own (see
    # receiver/pipeline/hook_token_split.py). None: the provider has no hook-token URL.
    point_hook_url: Callable[[SignatureRequest, str], Action] | None = None
    # Called once at start-up (warnings about its configuration, …).
    start: Callable[[AppContext], Awaitable[None]] | None = None
    # The reconciler's read of one request's real state (receiver/reconcile/): run as the
    # outbox action ``<name>.reconcile``; what it finds is normalized by ``normalize`` on
    # channel "reconcile". None: this provider is never asked.
    reconcile: ReconcileRead | None = None
    # Its final documents, for the archive (None: it keeps none signback can fetch).
    documents: DocumentSource | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"a provider name is lower-case letters, digits, _: {self.name!r}")
        if not callable(self.hooks):
            self.check_hooks(self.hooks)
        for name, template in {"return_url": RETURN_URL, **self.urls}.items():
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            if not template.startswith("/") or not fields <= URL_FIELDS:
                raise ValueError(
                    f"URL {name!r} of {self.name} must be a path using only "
                    f"{sorted(URL_FIELDS)}: {template!r}"
                )
        for operation in self.operations:
            if not operation.startswith(self.name + "."):
                raise ValueError(f"{self.name}'s operations are named {self.name}.…: {operation}")

    def hook_specs(self, ctx: AppContext) -> Sequence[HookSpec]:
        hooks = self.hooks(ctx) if callable(self.hooks) else self.hooks
        self.check_hooks(hooks)
        return hooks

    def check_hooks(self, hooks: Sequence[HookSpec]) -> None:
        prefix = f"/hooks/{self.name}"
        for hook in hooks:
            if hook.path != prefix and not hook.path.startswith(prefix + "/"):
                raise ValueError(f"{self.name}'s hook paths start with {prefix}: {hook.path}")

    @property
    def hook_prefix(self) -> str:
        """``/hooks/<name>``: the route group of its callbacks in the metrics."""
        return f"/hooks/{self.name}"

    @functools.cached_property
    def url_templates(self) -> Mapping[str, str]:
        """Every callback URL of this provider's requests, ``return_url`` first."""
        return {"return_url": RETURN_URL, **self.urls}

    @functools.cached_property
    def hook_token_placeholders(self) -> frozenset[str]:
        """The placeholders whose URL carries the request's hook token."""
        return frozenset(
            placeholder(name)
            for name, template in self.urls.items()
            if "{" + HOOK_TOKEN + "}" in template
        )


S = TypeVar("S", bound=ProviderSettings)


@dataclass(frozen=True)
class ProviderPackage(Generic[S]):
    """What the registry finds: cheap to import, nothing runs until ``build``."""

    name: str  # the same as the built Provider's
    settings: type[S]  # loaded and validated at start (its own env prefix)
    build: Callable[[S], Provider]
    rules_module: str | None = None  # the business rules shipped with the provider
    # CLI contributions: ``signback fake <name>`` (an emulator) and ``signback simulate
    # <name> …`` (sample callbacks to any base URL). Factories, so that building the CLI
    # imports nothing heavy.
    fake_command: Callable[[], click.Command] | None = None
    simulate_command: Callable[[], click.Command] | None = None


__all__ = [
    "HOOK_TOKEN",
    "JSON_ACK",
    "JSON_BODY",
    "RETURN_URL",
    "Accepted",
    "Ack",
    "DocumentFetch",
    "DocumentMissing",
    "DocumentNotReady",
    "DocumentRef",
    "DocumentSource",
    "HookSpec",
    "MediaTypes",
    "Operation",
    "Provider",
    "ProviderClient",
    "ProviderPackage",
    "ProviderSettings",
    "Reading",
    "ReconcileRead",
    "ReturnFacts",
    "SecretHeader",
    "StoredCallback",
    "Verify",
    "http_base_url",
    "placeholder",
]
