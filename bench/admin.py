"""The admin API's reads on a big store, timed by ``python -m bench.console``.

Run after the console's pages, on the same store, through the same in-process app (server
time, no network). Each query is asked ``samples`` times after one warm-up, its parameters
drawn afresh every time (states, providers, statuses, cursors anywhere in the table, random
request ids), so that the p99 covers the slow shapes as well as the quick ones: the median,
p99 and slowest are reported, and a p99 over the issue's 50 ms is marked a miss. A query
still short of its samples after ``budget`` seconds stops there (it misses by far anyway):
the table says how many it took.

:func:`fill_extras` adds what the console's fill left out and these lists read: signback's
own events with their deliveries to the two endpoints (the outbox then holds what a store
of that age holds: a delivery per event per endpoint, none ever deleted), and stored
callbacks that failed, matched no request or wait for the pipeline.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from receiver.model import RequestState
from receiver.outbox.downstream import DELIVER_OPERATION, lane_of
from receiver.outbox.downstream.catalogue import STATE_TYPES, TYPES
from receiver.store.statuses import ActionStatus, InboxStatus

TARGET_MS = 50.0
MIN_SAMPLES = 20  # what a query gets even past its budget
PROVIDERS = ("okdokument", "firma")  # firma installed, nothing stored: a filter's worst case
ENDPOINTS = (1, 2)  # the console fill's: 1 healthy, 2 failing for the last two hours

EVENT_SQL = (
    "INSERT INTO events (public_id, type, request_id, provider, timestamp, payload,"
    " dedupe_key, created_at) VALUES (?, ?, ?, 'okdokument', ?, ?, ?, ?)"
)
DELIVERY_SQL = (
    "INSERT INTO outbox (request_id, lane, action_key, operation, payload, status, due_at,"
    f" attempts, last_status_code, last_error, created_at, updated_at) VALUES (?, ?, ?,"
    f" '{DELIVER_OPERATION}', ?, ?, ?, ?, ?, ?, ?, ?)"
)
DELIVERY_ATTEMPT_SQL = (
    "INSERT INTO outbox_attempts (action_id, attempt, started_at, duration_ms, status_code,"
    " outcome, error, response_excerpt) VALUES (?, ?, ?, 85.0, ?, ?, ?, NULL)"
)
INBOX_SQL = (
    "INSERT INTO inbox (provider, channel, dedupe_key, received_at, body, headers, query,"
    " request_id, external_id, status, attempts, kind, provider_type, error) VALUES"
    " ('okdokument', 'sendinfo', ?, ?, ?, '{}', '', ?, ?, ?, ?, 'request.sent',"
    " 'sendinfo:tosign', ?)"
)


@dataclass(frozen=True)
class Shape:
    """What the fill put where: the ranges the queries draw their parameters from."""

    requests: int
    events: int  # signback's own (the events table), one for every other request

    @classmethod
    def of(cls, requests: int) -> Shape:
        return cls(requests=requests, events=(requests + 1) // 2)


# --- the fill ----------------------------------------------------------------------------


def _event_type(i: int, requests: int, state_of: Callable[[int, int], str]) -> str:
    state = RequestState(state_of(i, requests))
    return STATE_TYPES.get(state, STATE_TYPES[RequestState.SENT])  # registered emits none


def _event_rows(
    shape: Shape, now: float, state_of: Callable[[int, int], str]
) -> Iterator[tuple[object, ...]]:
    for k in range(shape.events):
        i = 2 * k  # request id i + 1, registered at the console fill's time for it
        at = now - (shape.requests - i) * 60.0 + 45.0
        event_type = _event_type(i, shape.requests, state_of)
        document = json.dumps(
            {"type": event_type, "request": {"id": i + 1, "reference": f"order-{i}"}},
            separators=(",", ":"),
        )
        yield (f"evt_{k:024x}", event_type, i + 1, at, document, f"bench:{k}", at)


def _deliveries(
    shape: Shape, now: float, state_of: Callable[[int, int], str]
) -> Iterator[tuple[int, int, str, int, float]]:
    """(event id, endpoint, status, attempts, time) in the order the pipeline queues them:
    every event to endpoint 1, the outcomes to endpoint 2; endpoint 2 has failed for the
    last two hours (pending) and now and then before (dead); endpoint 1 rarely."""
    for k in range(shape.events):
        i = 2 * k
        at = now - (shape.requests - i) * 60.0 + 45.0
        yield k + 1, 1, "dead" if k % 5000 == 4999 else "done", 1, at
        if _event_type(i, shape.requests, state_of).endswith(("completed", "declined")):
            if at > now - 7200:
                yield k + 1, 2, "pending", 2, at
            else:
                yield k + 1, 2, "dead" if k % 400 == 0 else "done", 3 if k % 400 == 0 else 1, at


def _delivery_rows(
    shape: Shape, now: float, state_of: Callable[[int, int], str]
) -> Iterator[tuple[object, ...]]:
    for event_id, endpoint, status, attempts, at in _deliveries(shape, now, state_of):
        failed = status != "done"
        yield (
            2 * (event_id - 1) + 1,
            lane_of(endpoint),
            f"deliver:{event_id}:{endpoint}",
            f'{{"endpoint":{endpoint},"event":{event_id}}}',
            status,
            at + 60.0 if status == "pending" else at,
            attempts,
            503 if failed else 200,
            "503: upstream unavailable" if failed else None,
            at,
            at + 1.0,
        )


def _attempt_rows(
    shape: Shape, now: float, first_id: int, state_of: Callable[[int, int], str]
) -> Iterator[tuple[object, ...]]:
    for n, (_, _, status, attempts, at) in enumerate(_deliveries(shape, now, state_of)):
        for attempt in range(1, attempts + 1):
            ok = status == "done"
            last = attempt == attempts
            outcome = "ok" if ok else ("dead" if status == "dead" and last else "retry")
            yield (first_id + n, attempt, at, 200 if ok else 503, outcome, None if ok else "503")


def _inbox_rows(events: int, now: float) -> Iterator[tuple[object, ...]]:
    """Callbacks the pipeline could not settle: failed (with a request), unmatched (none)
    and a few still pending; after the processed ones, as the newest rows."""
    counts = (("failed", max(events // 25_000, 5)), ("unmatched", max(events // 5_000, 10)))
    for status, count in (*counts, ("pending", 20)):
        for n in range(count):
            body = f'{{"state":"tosign","id":"doc-{status}-{n}"}}'
            yield (
                f"bench:{status}:{n}",
                now - (count - n) * 0.5,
                body.encode(),
                None if status == "unmatched" else n + 1,
                f"ext-{status}-{n}",
                status,
                1 if status == "failed" else 0,
                "rule failed: 500" if status == "failed" else None,
            )


def fill_extras(
    conn: Any,
    *,
    requests: int,
    events: int,
    now: float,
    commit: Callable[[], None],
    state_of: Callable[[int, int], str],
) -> None:
    """Add to a store the console's ``fill`` made (same ``conn``: sqlite3, or its COPY
    cursor): its provider actions hold outbox ids 1 … ⌈requests / 100⌉, the deliveries
    come after them."""
    from bench.console import executemany

    shape = Shape.of(requests)
    executemany(conn, EVENT_SQL, _event_rows(shape, now, state_of))
    commit()
    executemany(conn, DELIVERY_SQL, _delivery_rows(shape, now, state_of))
    commit()
    first_id = len(range(0, requests, 100)) + 1
    executemany(conn, DELIVERY_ATTEMPT_SQL, _attempt_rows(shape, now, first_id, state_of))
    executemany(conn, INBOX_SQL, _inbox_rows(events, now))
    commit()


# --- the queries -------------------------------------------------------------------------

PathOf = Callable[[random.Random, Shape], str]
STATES = tuple(s.value for s in RequestState)


def _query(**params: object) -> str:
    shown = [f"{k}={v}" for k, v in params.items() if v is not None]
    return ("?" + "&".join(shown)) if shown else ""


def _deep(rng: random.Random, top: int) -> int | None:
    """A keyset cursor: none (the first page) a quarter of the time, else anywhere."""
    return None if rng.random() < 0.25 else rng.randint(2, max(top, 2))


def _request_id(rng: random.Random, shape: Shape) -> int:
    """A request; half of them one with a provider action (every 100th has one)."""
    if rng.random() < 0.5:
        return 100 * rng.randrange(max(shape.requests // 100, 1)) + 1
    return rng.randint(1, shape.requests)


def _requests(rng: random.Random, shape: Shape, **params: object) -> str:
    return "/api/requests" + _query(**params, before_id=_deep(rng, shape.requests))


def _deliveries_path(rng: random.Random, shape: Shape, status: str | None) -> str:
    endpoint = rng.choice(ENDPOINTS)
    deep = _deep(rng, len(range(0, shape.requests, 100)) + 2 * shape.events)
    return f"/api/endpoints/{endpoint}/deliveries" + _query(status=status, before_id=deep)


QUERIES: tuple[tuple[str, PathOf], ...] = (
    ("requests", lambda r, s: _requests(r, s)),
    ("requests: 500 a page", lambda r, s: _requests(r, s, limit=500)),
    ("requests: state", lambda r, s: _requests(r, s, state=r.choice(STATES))),
    ("requests: provider", lambda r, s: _requests(r, s, provider=r.choice(PROVIDERS))),
    (
        "requests: state + provider",
        lambda r, s: _requests(r, s, state=r.choice(STATES), provider=r.choice(PROVIDERS)),
    ),
    (
        "requests: reference",
        lambda r, s: "/api/requests" + _query(reference=f"order-{r.randrange(s.requests)}"),
    ),
    (
        "requests: stale",
        lambda r, s: _requests(r, s, stale="true", provider=r.choice((None, *PROVIDERS))),
    ),
    ("request (timeline, actions)", lambda r, s: f"/api/requests/{_request_id(r, s)}"),
    ("request's documents", lambda r, s: f"/api/requests/{_request_id(r, s)}/documents"),
    ("outbox", lambda r, s: "/api/outbox"),
    ("outbox: status", lambda r, s: "/api/outbox" + _query(status=r.choice(tuple(ActionStatus)))),
    ("inbox", lambda r, s: "/api/inbox"),
    ("inbox: status", lambda r, s: "/api/inbox" + _query(status=r.choice(tuple(InboxStatus)))),
    ("inbox: provider", lambda r, s: "/api/inbox" + _query(provider=r.choice(PROVIDERS))),
    (
        "inbox: status + provider",
        lambda r, s: (
            "/api/inbox" + _query(status=r.choice(tuple(InboxStatus)), provider=r.choice(PROVIDERS))
        ),
    ),
    ("endpoints", lambda r, s: "/api/endpoints"),
    ("endpoint (deliveries counted)", lambda r, s: f"/api/endpoints/{r.choice(ENDPOINTS)}"),
    ("deliveries", lambda r, s: _deliveries_path(r, s, None)),
    (
        "deliveries: status",
        lambda r, s: _deliveries_path(r, s, r.choice(tuple(ActionStatus))),
    ),
    ("events", lambda r, s: "/api/events" + _query(after_id=_deep(r, s.events))),
    (
        "events: type",
        lambda r, s: (
            "/api/events" + _query(type=r.choice(tuple(TYPES)), after_id=_deep(r, s.events))
        ),
    ),
    ("events: request", lambda r, s: "/api/events" + _query(request_id=_request_id(r, s))),
    (
        "rejections",
        lambda r, s: (
            "/api/rejections"
            + _query(
                provider=r.choice((None, *PROVIDERS)),
                status=r.choice((None, 401, 400)),
                before_id=_deep(r, 10_000),
            )
        ),
    ),
    ("stats (counts)", lambda r, s: "/api/stats"),
)


@dataclass(frozen=True)
class Timing:
    name: str
    samples: int
    median: float
    p99: float
    slowest: float

    @property
    def missed(self) -> bool:
        return self.p99 > TARGET_MS


def p99(times: list[float]) -> float:
    """The 99th percentile, interpolated (with 200 samples: between the two slowest)."""
    if len(times) < 2:
        return times[0]
    return statistics.quantiles(times, n=100, method="inclusive")[98]


async def _timed(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    answer = await client.get(path, headers=headers)
    elapsed = (time.perf_counter() - started) * 1000
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return elapsed


async def time_queries(
    client: httpx.AsyncClient,
    shape: Shape,
    *,
    token: str,
    samples: int,
    budget: float,
    seed: int = 20,
) -> list[Timing]:
    headers = {"authorization": f"Bearer {token}"}
    rng = random.Random(seed)  # the same parameters on every database
    results = []
    for name, path_of in QUERIES:
        await _timed(client, path_of(rng, shape), headers)  # warm-up
        times: list[float] = []
        stop = time.monotonic() + budget
        while len(times) < samples and (len(times) < MIN_SAMPLES or time.monotonic() < stop):
            times.append(await _timed(client, path_of(rng, shape), headers))
        results.append(Timing(name, len(times), statistics.median(times), p99(times), max(times)))
    return results


def report(rows: list[Timing]) -> str:
    lines = [
        f"Admin API (p99 target {TARGET_MS:.0f} ms; parameters drawn afresh for each sample):",
        "",
        "| query | samples | median ms | p99 ms | slowest ms | |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [
        f"| {t.name} | {t.samples} | {t.median:.1f} | {t.p99:.1f} | {t.slowest:.1f} |"
        f" {'**miss**' if t.missed else ''} |"
        for t in rows
    ]
    return "\n".join(lines) + "\n"
