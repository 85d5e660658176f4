"""The statuses the inbox, the outbox and the attempt log store, as enums.

Each is a ``StrEnum`` stored as its value, so a row read back compares equal to its member
(``row["status"] == ActionStatus.DEAD``). SQL statements spell the values out; Python code
names the members.
"""

from __future__ import annotations

import enum


class InboxStatus(enum.StrEnum):
    """A stored callback's way through the pipeline:
    pending → processing → processed | unmatched | failed."""

    PENDING = "pending"  # stored and acknowledged, waiting for the pipeline
    PROCESSING = "processing"  # claimed by a worker, under a lease
    PROCESSED = "processed"  # applied to its request (or stored only: see its note)
    UNMATCHED = "unmatched"  # no registered request yet; re-queued when one is registered
    FAILED = "failed"  # could not be processed (its error says why); can be re-queued


class ActionStatus(enum.StrEnum):
    """An outbox action: pending → in_flight → done | dead | skipped (or pending again)."""

    PENDING = "pending"  # waiting until it is due (and its request's earlier actions end)
    IN_FLIGHT = "in_flight"  # claimed by a dispatcher, under a lease
    DONE = "done"  # the provider accepted it
    DEAD = "dead"  # given up (its last error says why); can be re-queued
    SKIPPED = "skipped"  # deliberately not sent (its last error says why); can be re-queued


class AttemptOutcome(enum.StrEnum):
    """How one logged attempt at an action ended (``outbox_attempts.outcome``)."""

    OK = "ok"  # the action is done
    RETRY = "retry"  # it failed and will be tried again
    THROTTLED = "throttled"  # the provider asked us to wait; not counted as an attempt
    DEAD = "dead"  # it failed and is given up
    SKIPPED = "skipped"  # nothing was changed on purpose (the error says why)
    INTERRUPTED = "interrupted"  # its worker stopped mid-call; the call may have gone out
