"""The downstream scenario: how fast signback drains a backlog of deliveries, and what a
slow endpoint does to the intake and to another endpoint.

- **Drain:** a backlog of deliveries (events stored, one ``signback.deliver`` action each,
  spread over many requests) to an endpoint that answers after 100 ms, drained by one
  ``signback serve`` on SQLite. The rate is counted where it matters, at the endpoint
  (``bench/endpoint.py``): arrivals over the time from the first to the last. Baseline, just
  before and just after: a bare sender (the same HTTP client and concurrency, no database,
  no signing) posting to the same endpoint.
- **Isolation:** two endpoints with a backlog each, one answering after 100 ms, the other
  after 2 s, while wrk sends OKdokument callbacks; compared with the same run where both
  answer after 100 ms, just before and just after: the intake's requests/s and p99, and
  the 100 ms endpoint's deliveries/s during the load.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from bench.load import WrkResult
from bench.procs import LOOPBACK, Proc, free_port, python_env
from bench.report import Row, check, fmt_int, fmt_ms
from receiver.outbox.downstream import DELIVER_OPERATION, lane_of
from receiver.outbox.downstream.events import document, new_public_id
from receiver.outbox.downstream.secrets import SecretBox, new_secret
from receiver.outbox.lean_http import LeanHttpClient

if TYPE_CHECKING:
    from bench.scenarios import Bench, Server

DRAIN_TARGET = 500.0  # deliveries/s per process to a 100 ms endpoint (issue 16)
CONCURRENCY = 64  # SIGNBACK_ENDPOINT_CONCURRENCY_PER_ENDPOINT's default


@dataclass(frozen=True)
class Sizes:
    drain: int  # deliveries in the drain's backlog
    backlog: int  # deliveries per endpoint in the isolation runs
    baseline: int  # posts by the bare sender

    @classmethod
    def of(cls, quick: bool, quiet_wait_s: float, intake_s: float) -> Sizes:
        if quick:
            return cls(drain=5_000, backlog=8_000, baseline=2_000)
        # The 100 ms endpoint must still have work when the load ends, however long the wait
        # for a quiet machine before it: 700/s over that wait, the run and the start.
        backlog = int(700 * (quiet_wait_s + intake_s + 30))
        return cls(drain=100_000, backlog=backlog, baseline=20_000)


# --- figures (pure) ------------------------------------------------------------------------


def arrival_rate(times: Sequence[float]) -> float:
    """Arrivals per second from the first to the last (0 for fewer than two)."""
    if len(times) < 2:
        return 0.0
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else 0.0


def window_rate(times: Sequence[float], start: float, end: float) -> float:
    """Arrivals per second within [start, end)."""
    if end <= start:
        return 0.0
    return sum(1 for t in times if start <= t < end) / (end - start)


def drain_rows(
    count: int, signback_rate: float, bare_before: float, bare_after: float, done: int
) -> list[Row]:
    scenario = f"Downstream · drain {count:,} deliveries to a 100 ms endpoint · SQLite"
    bare = (bare_before + bare_after) / 2
    ratio = signback_rate / bare if bare else 0.0
    return [
        Row(
            scenario,
            "deliveries/s (bare sender, same concurrency: before / after)",
            fmt_int(signback_rate),
            f"{fmt_int(bare_before)} / {fmt_int(bare_after)}",
            f"{ratio:.2f}x",
            f"≥ {DRAIN_TARGET:g}/s",
            check(signback_rate >= DRAIN_TARGET, f"({signback_rate / DRAIN_TARGET - 1:+.0%})"),
        ),
        Row(
            scenario,
            "delivered / backlog",
            f"{done:,} / {count:,}",
            "",
            "",
            "all",
            check(done == count, f"({count - done:,} missing)"),
        ),
    ]


@dataclass(frozen=True)
class IsolationRun:
    intake: WrkResult
    neighbour_rate: float  # deliveries/s to the 100 ms endpoint during the load
    other_rate: float  # the second endpoint's (100 ms or 2 s)
    invalid: str | None = None


def isolation_rows(slow: IsolationRun, fast: Sequence[IsolationRun]) -> list[Row]:
    scenario = "Downstream · a 2 s endpoint beside a 100 ms one, during the intake · SQLite"
    invalid = next((r.invalid for r in (slow, *fast) if r.invalid), None)
    rps = sum(r.intake.rps for r in fast) / len(fast)
    p99 = sum(r.intake.latency_ms["p99"] for r in fast) / len(fast)
    neighbour = sum(r.neighbour_rate for r in fast) / len(fast)
    rows = []
    for metric, value, reference, fmt, rendered in (
        ("intake requests/s", slow.intake.rps, rps, fmt_int, [fmt_int(r.intake.rps) for r in fast]),
        (
            "intake latency p99",
            slow.intake.latency_ms["p99"],
            p99,
            fmt_ms,
            [fmt_ms(r.intake.latency_ms["p99"]) for r in fast],
        ),
        (
            "deliveries/s to the 100 ms endpoint",
            slow.neighbour_rate,
            neighbour,
            fmt_int,
            [fmt_int(r.neighbour_rate) for r in fast],
        ),
    ):
        ratio = value / reference if reference else 0.0
        # "Slows nothing": one-sided. A slow endpoint takes less of the loop than a fast
        # one, so its neighbour and the intake may well do better beside it.
        lower_is_better = metric.endswith("p99")
        ok = reference > 0 and (ratio <= 1.10 if lower_is_better else ratio >= 0.90)
        rows.append(
            Row(
                scenario,
                f"{metric} (both endpoints 100 ms: before / after)",
                fmt(value),
                " / ".join(rendered),
                f"{ratio:.2f}x",
                "≤ 1.1x" if lower_is_better else "≥ 0.9x",
                check(invalid is None and ok, invalid or f"({ratio - 1:+.0%})"),
            )
        )
    return rows


# --- the store -------------------------------------------------------------------------------


def add_endpoint(db_path: str, url: str, secret_key: str) -> int:
    """An endpoint row, as ``POST /api/endpoints`` makes it (its secret sealed)."""
    sealed = SecretBox(secret_key).seal(new_secret())
    now = time.time()
    with closing(sqlite3.connect(db_path)) as conn, conn:
        cursor = conn.execute(
            "INSERT INTO endpoints (url, description, kinds, providers, include_raw, status,"
            " secret, created_at, updated_at) VALUES (?, 'bench', '[]', '[]', 0, 'enabled', ?,"
            " ?, ?)",
            (url, sealed, now, now),
        )
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)


def fill_deliveries(
    db_path: str, endpoint_ids: Sequence[int], request_ids: Sequence[int], count: int
) -> None:
    """``count`` events spread over the requests, each queued to every endpoint, as the
    pipeline stores them (a document of the usual size, one action per endpoint)."""
    now = time.time()
    with closing(sqlite3.connect(db_path)) as conn, conn:
        first = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]) + 1
        events, actions = [], []
        for i in range(count):
            event_id = first + i
            request_id = request_ids[i % len(request_ids)]
            public_id = new_public_id()
            data = {
                "request": {
                    "id": request_id,
                    "provider": "okdokument",
                    "external_id": f"sr-{request_id}",
                    "reference": f"order-{request_id}",
                    "state": "completed",
                    "previous_state": "sent",
                    "metadata": {"customer": request_id},
                },
                "event": {
                    "kind": "request.completed",
                    "provider_type": "signed",
                    "occurred_at": None,
                    "confirmed": True,
                    "details": {"provider_status": "signed"},
                    "source": "callback",
                },
            }
            payload = document("signature_request.completed", public_id, now, data)
            events.append(
                (
                    event_id,
                    public_id,
                    "signature_request.completed",
                    request_id,
                    "okdokument",
                    now,
                    payload,
                    f"bench:{public_id}",
                    now,
                )
            )
            for endpoint_id in endpoint_ids:
                actions.append(
                    (
                        request_id,
                        lane_of(endpoint_id),
                        f"deliver:{event_id}:{endpoint_id}",
                        DELIVER_OPERATION,
                        f'{{"endpoint":{endpoint_id},"event":{event_id}}}',
                        now,
                        now,
                        now,
                    )
                )
        conn.executemany(
            "INSERT INTO events (id, public_id, type, request_id, provider, timestamp, payload,"
            " dedupe_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            events,
        )
        conn.executemany(
            "INSERT INTO outbox (request_id, lane, action_key, operation, payload, status,"
            " due_at, attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?,"
            " 0, ?, ?)",
            actions,
        )


def delivered(db_path: str) -> int:
    with closing(sqlite3.connect(db_path)) as conn:
        return int(
            conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE lane LIKE 'endpoint:%' AND status = 'done'"
            ).fetchone()[0]
        )


# --- processes and load ----------------------------------------------------------------------


def start_endpoint(bench: Bench, delays: dict[str, float]) -> tuple[Proc, str]:
    port = free_port()
    args = ["-m", "bench.endpoint", "--port", str(port)]
    for path, seconds in delays.items():
        args += ["--delay", f"{path}={seconds}"]
    proc = bench.procs.python("endpoint", args, python_env())
    url = f"http://{LOOPBACK}:{port}"
    proc.wait_http(f"{url}/_stats")
    return proc, url


def arrivals(url: str) -> dict[str, list[float]]:
    answer: dict[str, list[float]] = httpx.get(f"{url}/_stats", timeout=60).json()
    return answer


async def _bare_send(url: str, path: str, count: int, concurrency: int) -> float:
    client = LeanHttpClient(
        url, {"Content-Type": "application/json"}, timeout=30, max_connections=concurrency
    )
    body = b'{"type":"signature_request.completed"}' * 12  # about a delivery's size
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            next_index += 1
            await client.request("POST", path, content=body)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    return count / elapsed


def bare_rate(url: str, path: str, count: int) -> float:
    """The baseline: ``count`` posts to ``path`` with the same concurrency, nothing else."""
    return asyncio.run(_bare_send(url, path, count, CONCURRENCY))


def wait_delivered(url: str, path: str, count: int, timeout: float) -> list[float]:
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        times = arrivals(url).get(path, [])
        if len(times) >= count:
            return times
        if len(times) != last:
            last, last_change = len(times), time.monotonic()
        elif time.monotonic() - last_change > 60:
            break
        time.sleep(1.0)
    raise RuntimeError(f"the endpoint got {last:,} of {count:,} deliveries")


ENV = {"SIGNBACK_ENDPOINT_ALLOW_PRIVATE": "true"}


def scenario(bench: Bench) -> None:
    sizes = Sizes.of(
        bench.config.sizes.intake_s < 10, bench.config.quiet_wait_s, bench.config.sizes.intake_s
    )
    drain(bench, sizes)
    isolation(bench, sizes)


def drain(bench: Bench, sizes: Sizes) -> None:
    url = bench.fresh_sqlite("downstream-drain")
    db_path = url.removeprefix("sqlite:///")
    targets = bench.register(url, "okdokument", max(100, sizes.drain // 20))
    endpoint, endpoint_url = start_endpoint(bench, {"/drain": 0.1, "/bare": 0.1})
    try:
        endpoint_id = add_endpoint(db_path, f"{endpoint_url}/drain", bench.secret_key)
        bench.say(f"downstream: filling {sizes.drain:,} deliveries")
        fill_deliveries(db_path, [endpoint_id], [t.request_id for t in targets], sizes.drain)
        bench.say("downstream: bare sender (baseline, before)")
        before = bare_rate(endpoint_url, "/bare", sizes.baseline)
        bench.say(f"downstream: signback drains {sizes.drain:,} deliveries")
        server = bench.start_signback("signback-downstream-drain", url, extra_env=ENV)
        try:
            times = wait_delivered(endpoint_url, "/drain", sizes.drain, sizes.drain / 100 + 120)
        finally:
            bench.kill9(server)
        bench.say("downstream: bare sender (baseline, after)")
        after = bare_rate(endpoint_url, "/bare", sizes.baseline)
    finally:
        bench.procs.stop(endpoint)
    bench.rows.extend(
        drain_rows(sizes.drain, arrival_rate(times), before, after, delivered(db_path))
    )


def isolation(bench: Bench, sizes: Sizes) -> None:
    runs: dict[str, IsolationRun] = {}
    for name, delay in (("fast", 0.1), ("slow", 2.0), ("fast again", 0.1)):
        runs[name] = isolation_run(bench, name, delay, sizes)
    bench.rows.extend(isolation_rows(runs["slow"], [runs["fast"], runs["fast again"]]))


def isolation_run(bench: Bench, name: str, other_delay: float, sizes: Sizes) -> IsolationRun:
    from bench.scenarios import OKD, answers_invalid

    url = bench.fresh_sqlite(f"downstream-{name.replace(' ', '-')}")
    db_path = url.removeprefix("sqlite:///")
    targets = bench.register(url, OKD, bench.config.sizes.requests)
    endpoint, endpoint_url = start_endpoint(bench, {"/neighbour": 0.1, "/other": other_delay})
    try:
        ids = [
            add_endpoint(db_path, f"{endpoint_url}/{path}", bench.secret_key)
            for path in ("neighbour", "other")
        ]
        fill_deliveries(db_path, ids, [t.request_id for t in targets], sizes.backlog)
        bench.say(f"downstream: intake beside a {other_delay:g} s endpoint ({name})")
        server: Server = bench.start_signback(
            f"signback-downstream-{name.replace(' ', '-')}", url, extra_env=ENV
        )
        window: list[float] = []
        try:
            result = bench.wrk(
                server.url,
                bench.okd_data(targets, "tosign"),
                bench.config.sizes.intake_s,
                label=f"Downstream · intake beside a {other_delay:g} s endpoint ({name})",
                server_pid=server.proc.pid,
                on_start=lambda _pid: window.append(time.time()),
            )
            window.append(time.time())
        finally:
            bench.kill9(server)
        seen = arrivals(endpoint_url)
    finally:
        bench.procs.stop(endpoint)
    start, end = (window[0], window[-1]) if len(window) == 2 else (0.0, 0.0)
    neighbour = seen.get("/neighbour", [])
    invalid = answers_invalid(result)
    if neighbour and max(neighbour) < end - 1:
        invalid = invalid or "(invalid: the 100 ms endpoint's backlog ran out during the load)"
    return IsolationRun(
        intake=result,
        neighbour_rate=window_rate(neighbour, start, end),
        other_rate=window_rate(seen.get("/other", []), start, end),
        invalid=invalid,
    )
