"""After the ack: normalize → match → state machine → rules → outbox, in one transaction.

Up to ``CHUNK`` inbox rows (``POSTGRES_CHUNK`` on PostgreSQL) share a transaction. Their
requests are read (on PostgreSQL: locked, in id order) in one statement first, the endpoints
once, and the rows are marked settled in one batch at the end, so a chunk costs a few round trips
whatever its size. Each event's writes (its state, its actions, its downstream event and
that event's deliveries) are held back and go with the next statement awaited, or all
together before the settlements, whose notes count what was new; on PostgreSQL each kind
of them is one statement for the whole chunk (``Transaction.execute_batched_later``). On
PostgreSQL a transaction per row had cost nine round trips per event, and each one waits
for the event loop, which the intake keeps busy: the more callbacks came in, the slower
they were worked off (docs/performance.md). Should one row fail, the chunk is rolled back
and its rows go again one transaction each, so that only that row fails; savepoints around
every row, for a failure that almost never comes, had cost two statements per row.

Runs in ``signback serve`` (unless SIGNBACK_RUN_WORKER=false) and in ``signback worker``.
On PostgreSQL rows are claimed with a lease, so several processes can share the work and a
crashed worker's rows come back; on SQLite a chunk is taken and settled in one transaction,
which a crash rolls back. Processing is idempotent: a row processed twice finds the state
already moved and the rules' actions already stored under the same keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from receiver import jsonutil
from receiver.archive.trigger import archive_actions
from receiver.backoff import MAX_LOOP_DELAY, Backoff
from receiver.context import AppContext
from receiver.events import EventKind, NormalizedEvent
from receiver.intake.returns import nothing_read
from receiver.logs import get_logger
from receiver.model import SignatureRequest
from receiver.outbox.downstream import emit as downstream_emit
from receiver.pipeline import states
from receiver.providers.contract import ReturnFacts, StoredCallback
from receiver.store import inbox, outbox, requests
from receiver.store.db.base import Row, Transaction
from receiver.store.statuses import InboxStatus
from receiver.store.storable import text_problem

log = get_logger("signback.pipeline")

BATCH_SIZE = 100
# Rows per transaction on a single-writer database (SQLite): small enough that the
# callbacks arriving meanwhile wait at most a few milliseconds for their own commit.
CHUNK = 16
# The same while callbacks pour in (the governor saturated). A SQLite chunk is one step of
# the event loop, start to commit: 16 rows of some providers' events held it 2-6 ms, and
# every callback in flight waited that long; the intake's p99 nearly doubled with the
# worker on. Four rows cost the pipeline a few more commits while the work waits anyway.
SATURATED_CHUNK = 4
# On PostgreSQL a chunk costs a few round trips whatever its size, and each one waits for
# the event loop, which the dispatcher's calls and the intake keep busy: with 16 rows a
# chunk the pipeline drained a backlog at about half the rate it reaches with 50, beside the
# dispatcher. Its requests stay locked until it commits, a few milliseconds more.
POSTGRES_CHUNK = 50
# Rows processed between two turns given to the event loop inside a chunk (nothing in a
# row's processing waits for the database: its writes are held), so that acknowledgements
# waiting to be sent never wait for a whole chunk's processing.
ROWS_PER_TURN = 16
# The same while callbacks pour in: a turn every four rows, so that the intake's commits,
# answered while a step runs, are read back within a millisecond or so.
SATURATED_ROWS_PER_TURN = 4
MAX_PROCESSING_ATTEMPTS = 5


@dataclass
class Settling:
    """What the rows of one transaction share: the requests read so far (by id, kept up to
    date: two events of one request in a chunk, the second sees the state the first left),
    which (provider, external id) they were found under, and the rows' settlements, written
    in one batch before the commit (:meth:`write`).

    A settlement may wait for what the row's held writes did (how many of its actions were
    new, for its note): then it is a function of the transaction, called once they were
    sent. So a chunk's actions go without a round trip of their own per event."""

    known: dict[int, SignatureRequest] = field(default_factory=dict)
    by_key: dict[tuple[str, str], int] = field(default_factory=dict)
    finished: list[dict[str, Any] | Callable[[Transaction], dict[str, Any]]] = field(
        default_factory=list
    )

    async def write(self, tx: Transaction) -> None:
        """The settlements, sent with the commit (``inbox.finish_many``)."""
        if any(callable(f) for f in self.finished):
            await tx.flush()  # one round trip for the held writes of every row
        settlements = [f(tx) if callable(f) else f for f in self.finished]
        await inbox.finish_many(tx, settlements)

    def remember(self, rows: dict[int, Row]) -> None:
        for request_id, row in rows.items():
            request = requests.from_row(row)
            self.known[request_id] = request
            self.by_key[(request.provider, request.external_id)] = request_id


def stored_callback(row: Row) -> StoredCallback:
    body = row["body"]
    return StoredCallback(
        inbox_id=int(row["id"]),
        provider=row["provider"],
        channel=row["channel"],
        body=bytes(body) if not isinstance(body, bytes) else body,
        headers=jsonutil.loads_object(row["headers"]),
        query=row["query"] or "",
        request_id=None if row["request_id"] is None else int(row["request_id"]),
        received_at=float(row["received_at"]),
    )


def normalize_return(
    callback: StoredCallback, parse: Callable[[str], ReturnFacts] = nothing_read
) -> NormalizedEvent:
    """The signer's browser at /return/<token>: the same event for every provider; what its
    query says is read by the provider's ``parse``. It is a person's browser, not the
    provider: the values are recorded, never trusted for state."""
    facts = parse(callback.query)
    return NormalizedEvent(
        provider=callback.provider,
        kind=EventKind.SIGNER_RETURNED,
        provider_type=f"return:{'unknown' if facts.result is None else facts.result}",
        external_id=None,
        occurred_at=facts.occurred_at,
        details=dict(facts.details),
        raw=dict(facts.raw),
    )


class Pipeline:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def normalize(self, callback: StoredCallback) -> NormalizedEvent:
        provider = self.ctx.providers.get(callback.provider)
        if callback.channel == "return":
            parse = provider.parse_return if provider is not None else None
            event = normalize_return(callback, parse or nothing_read)
        else:
            if provider is None:
                raise LookupError(f"no provider named {callback.provider!r} is installed")
            event = provider.normalize(callback)
        if event.event_id is None:
            event = replace(event, event_id=f"inbox-{callback.inbox_id}")
        return event

    async def run(self, stopping: asyncio.Event) -> None:
        backoff = Backoff(self.ctx.settings.poll_interval, MAX_LOOP_DELAY)
        while not stopping.is_set():
            try:
                processed = await self.run_once()
                backoff.reset()
            except Exception as exc:  # the database went away: back off, keep the loop alive
                delay = backoff.next_delay()
                log.warning(
                    "pipeline cannot reach the database", error=str(exc), retry_in=round(delay, 2)
                )
                await backoff.sleep(delay, stopping)
                continue
            if processed == 0:
                await self.ctx.db.wait(inbox.INBOX_CHANNEL, self.ctx.settings.poll_interval)

    async def run_once(self) -> int:
        """Process up to BATCH_SIZE pending rows; how many there were."""
        if self.ctx.db.single_writer:
            return await self._run_once_single_writer()
        rows = await inbox.claim(
            self.ctx.db,
            limit=BATCH_SIZE,
            now=self.ctx.clock(),
            lease_seconds=self.ctx.settings.lease_seconds,
        )
        claimed_at = self.ctx.clock()
        for start in range(0, len(rows), POSTGRES_CHUNK):
            if self.ctx.clock() - claimed_at > self.ctx.settings.lease_seconds / 2:
                # Half the lease is gone (a slow database, a huge backlog): hand the rest back
                # before another worker could take them over and do the work twice.
                await inbox.release(self.ctx.db, [int(r["id"]) for r in rows[start:]])
                break
            # Under a flood of callbacks, the acknowledgements come first (loadshare.py).
            await self.ctx.governor.turn()
            await self.process_claimed(rows[start : start + POSTGRES_CHUNK])
            # Statements run on the event loop: let waiting HTTP requests in between
            # transactions, so a backlog never holds an acknowledgement up for long.
            await asyncio.sleep(0)
        return len(rows)

    async def _run_once_single_writer(self) -> int:
        """SQLite: chunks of CHUNK rows, each taken and settled in one
        transaction (see :func:`inbox.take_pending`): no claim to write, and no lease. Each
        row is tried at most once per call: one that failed waits for the next."""
        done = last_id = 0
        while done < BATCH_SIZE:
            await self.ctx.governor.turn()  # the acknowledgements come first
            limit = SATURATED_CHUNK if self.ctx.governor.saturated() else CHUNK
            taken, last_id = await self.process_chunk(limit, after_id=last_id)
            if not taken:
                break
            done += taken
            await asyncio.sleep(0)  # let waiting HTTP requests in between transactions
        return done

    async def process_claimed(self, rows: list[Row]) -> None:
        """Claimed rows (in id order) in one transaction; if any fails, each in its own, so
        that only that row fails (they stay claimed meanwhile)."""
        if len(rows) == 1:
            await self.process(rows[0])
            return
        reports: list[Callable[[], None]] = []
        try:
            async with self.ctx.db.transaction() as tx:
                settling = await self._read_requests(tx, rows)
                per_turn = self._rows_per_turn()
                for n, row in enumerate(rows):
                    if n and n % per_turn == 0:
                        await asyncio.sleep(0)
                        per_turn = self._rows_per_turn()
                    reports.append(await self._process_in(tx, stored_callback(row), settling))
                await settling.write(tx)
        except Exception as exc:
            log.warning("processing a chunk failed; one row at a time", error=str(exc))
            for row in rows:
                await self.process(row)
            return
        for report in reports:
            report()  # log lines only once the work is committed

    def _rows_per_turn(self) -> int:
        return SATURATED_ROWS_PER_TURN if self.ctx.governor.saturated() else ROWS_PER_TURN

    async def _read_requests(self, tx: Transaction, rows: list[Row]) -> Settling:
        """The requests ``rows`` name, in one statement: by the id the intake found, or by
        the provider's request id the intake read (the event's own, once normalized, is
        looked up by itself if it differs). Locked where the database locks rows."""
        wanted = {int(r["request_id"]) for r in rows if r["request_id"] is not None}
        keys = {
            (str(r["provider"]), str(r["external_id"]))
            for r in rows
            if r["request_id"] is None
            and r["external_id"] is not None
            and matchable(str(r["external_id"]))
        }
        settling = Settling()
        lock = self.ctx.db.render("{for_update}")
        settling.remember(await requests.get_many(tx, wanted, keys=keys, lock=lock))
        return settling

    async def process(self, row: Row) -> None:
        """One inbox row in its own transaction."""
        callback = stored_callback(row)
        try:
            async with self.ctx.db.transaction() as tx:
                settling = Settling()
                report = await self._process_in(tx, callback, settling)
                await settling.write(tx)
        except Exception as exc:
            # Rolled back whole (a failing rule, or the database went away): mark the row
            # for a retry in a transaction of its own.
            log.exception("processing failed", inbox_id=callback.inbox_id)
            await inbox.release_for_retry(
                self.ctx.db,
                callback.inbox_id,
                error=f"{type(exc).__name__}: {exc}",
                max_attempts=MAX_PROCESSING_ATTEMPTS,
            )
            return
        report()

    async def process_chunk(self, limit: int, *, after_id: int = 0) -> tuple[int, int]:
        """Take up to ``limit`` pending rows (after ``after_id``) and process them, in one
        transaction; if any fails, each in its own (claimed), so that only that row fails.
        Their requests are read in one query first (a single-writer database: nobody else
        can change them before the commit). Returns how many rows were taken, and the last
        one's id."""
        reports: list[Callable[[], None]] = []
        rows: list[Row] = []
        try:
            async with self.ctx.db.transaction() as tx:
                rows = await inbox.take_pending(tx, limit=limit, after_id=after_id)
                settling = Settling()
                wanted = {int(r["request_id"]) for r in rows if r["request_id"] is not None}
                settling.remember(await requests.get_many(tx, wanted))
                for row in rows:
                    reports.append(await self._process_in(tx, stored_callback(row), settling))
                await settling.write(tx)
        except Exception as exc:
            if not rows:
                raise  # taking them failed: the database, most likely (run() backs off)
            # Nothing of this chunk was committed: do it row by row, which isolates the cause.
            log.warning("processing a chunk failed; one row at a time", error=str(exc))
            claimed = await inbox.claim_ids(
                self.ctx.db,
                [int(r["id"]) for r in rows],
                now=self.ctx.clock(),
                lease_seconds=self.ctx.settings.lease_seconds,
            )
            for row in claimed:
                await self.process(row)
            return len(rows), int(rows[-1]["id"])
        for report in reports:
            report()  # log lines only once the work is committed
        return len(rows), int(rows[-1]["id"]) if rows else after_id

    async def _process_in(
        self, tx: Transaction, callback: StoredCallback, settling: Settling
    ) -> Callable[[], None]:
        """Process one row inside ``tx``; returns what to report once ``tx`` commits. A
        failure propagates: the caller rolls back and marks the row for a retry. The row's
        settlement goes to ``settling.finished``: the caller writes it before the commit."""
        try:
            event = self.normalize(callback)
        except Exception as exc:
            # The bytes were acknowledged, so they stay: parked as failed, visible, retryable.
            reason = str(exc)
            settling.finished.append(
                inbox.finish_params(
                    callback.inbox_id,
                    status=InboxStatus.FAILED,
                    now=self.ctx.clock(),
                    error=f"normalize failed: {reason}",
                )
            )

            def report_failed() -> None:
                log.error("cannot normalize callback", inbox_id=callback.inbox_id, error=reason)
                self.ctx.metrics.events.inc(callback.provider, "unknown", InboxStatus.FAILED)

            return report_failed
        return await self._apply(tx, callback, event, settling)

    async def _apply(
        self,
        tx: Transaction,
        callback: StoredCallback,
        event: NormalizedEvent,
        settling: Settling,
    ) -> Callable[[], None]:
        ctx = self.ctx
        now = ctx.clock()
        lock = ctx.db.render("{for_update}")
        facts: dict[str, Any] = {
            "kind": event.kind.value,
            "provider_type": event.provider_type,
            "event_id": event.event_id,
            "occurred_at": event.occurred_at,
        }
        known = settling.known
        request: SignatureRequest | None = None
        if callback.request_id is not None:
            request = known.get(callback.request_id)
            if request is None:
                request = _request_or_none(await requests.get(tx, callback.request_id, lock=lock))
        elif event.external_id is not None and matchable(event.external_id):
            found = settling.by_key.get((event.provider, event.external_id))
            if found is not None:
                # Read (and locked) with the chunk: it was registered and committed before,
                # so no registration can race with this event.
                request = known[found]
            else:
                # Serialize with a registration of the same request (see registration.py):
                # otherwise an event looked up just before the registration commits could be
                # marked unmatched just after the registration re-queued unmatched events.
                await tx.lock_key(requests.match_key(event.provider, event.external_id))
                request = _request_or_none(
                    await requests.by_external_id(tx, event.provider, event.external_id, lock=lock)
                )

        if request is None:
            if event.external_id is not None and not matchable(event.external_id):
                status, note = InboxStatus.PROCESSED, "names a request id no registration can have"
            elif event.external_id is not None:
                status, note = InboxStatus.UNMATCHED, "no registered request yet; kept until one is"
            elif event.kind is EventKind.TEST:
                status, note = InboxStatus.PROCESSED, "test event: stored, changes nothing"
            else:  # template.*, workspace.*, unknown types without a signing request
                status, note = InboxStatus.PROCESSED, "names no signature request: stored only"
            settling.finished.append(
                inbox.finish_params(
                    callback.inbox_id,
                    status=status,
                    now=now,
                    external_id=event.external_id,
                    note=note,
                    **facts,
                )
            )

            def report_unmatched() -> None:
                log.info(
                    "event unmatched" if status == InboxStatus.UNMATCHED else "event stored",
                    inbox_id=callback.inbox_id,
                    provider=event.provider,
                    **facts,
                )

            return report_unmatched

        transition = states.apply(request.state, event.kind, confirmed=event.confirmed)
        provider_status = event.details.get("provider_status") if event.confirmed else None
        # A late event's provider status is older than the stored one (a "created" delivered
        # after "sent" may say "draft"): the state machine keeps the state, and the status
        # stays with it.
        if transition.changed or (
            provider_status
            and not transition.late
            and provider_status != request.provider_status
            and not states.is_terminal(request.state)
        ):
            await requests.set_state(
                tx,
                request.id,
                state=transition.after,
                provider_status=str(provider_status) if provider_status else None,
                now=now,
            )
            request = replace(
                request,
                state=transition.after,
                provider_status=str(provider_status or request.provider_status or "") or None,
                updated_at=now,
            )
            known[request.id] = request

        actions = []
        if self._rules_apply(event, transition):
            actions = ctx.rules.actions_for(event, request)
        # --- archive (issue 18): a confirmed completion queues the download of its files.
        archiving = archive_actions(ctx, event, request, transition)
        if archiving:
            actions = [*actions, *archiving]
        # ---
        # Held back: how many were new (for the note) is read once the chunk's writes went.
        inserted = await outbox.insert_actions_later(
            tx, request.id, actions, now=now, source_inbox_id=callback.inbox_id
        )
        # --- downstream (issue 16): the event this change emits, and its deliveries, are
        # queued in this same transaction (receiver/outbox/downstream/emit.py).
        emitted = await downstream_emit.for_processed_event(
            tx, callback=callback, event=event, request=request, transition=transition, now=now
        )
        # ---
        stored = 0

        def settlement(sent: Transaction) -> dict[str, Any]:
            nonlocal stored
            stored = outbox.stored(sent, inserted)
            note = transition.note + (f"; {stored} action(s) queued" if stored else "")
            if emitted is not None and emitted.new:
                note += f"; {emitted.event_type} to {emitted.deliveries} endpoint(s)"
            return inbox.finish_params(
                callback.inbox_id,
                status=InboxStatus.PROCESSED,
                now=now,
                request_id=request.id,
                external_id=event.external_id or request.external_id,
                state_before=transition.before.value,
                state_after=transition.after.value,
                note=note,
                **facts,
            )

        settling.finished.append(settlement)

        def report_processed() -> None:
            log.info(
                "event processed",
                inbox_id=callback.inbox_id,
                request=request.id,
                state=transition.after.value,
                changed=transition.changed,
                actions=stored,
                kind=event.kind.value,
            )

        return report_processed

    @staticmethod
    def _rules_apply(event: NormalizedEvent, transition: states.Transition) -> bool:
        """Rules for a state-changing kind run only when the event moved the state.

        A late or repeated ``completed`` is recorded but triggers nothing, so rules never act
        twice on one fact. Kinds that carry no state (a browser return, an unknown type) always
        run their rules. Unconfirmed claims run their rules (the ones that check a claim)
        unless the request has already ended.
        """
        if not event.confirmed:
            return not states.is_terminal(transition.before)
        if event.kind in states.TARGET:
            return transition.changed
        return event.kind is not EventKind.TEST


def matchable(external_id: str) -> bool:
    """Whether a registered request could have this id: registration refuses ids the schema
    cannot hold (receiver/admin/api.py), so looking such an id up (and locking on it) is moot,
    and on PostgreSQL it would fail the row on every try."""
    return len(external_id) <= inbox.EXTERNAL_ID_CHARS and text_problem(external_id) is None


def _request_or_none(row: Row | None) -> SignatureRequest | None:
    return None if row is None else requests.from_row(row)


__all__ = ["Pipeline", "normalize_return", "stored_callback"]
