"""Downstream delivery: normalized, signed events pushed to the company's own endpoints.

Every state change signback records (and a few operational facts) becomes one normalized
event (``catalogue.py``), stored once in ``events`` (``events.py``) and fanned out, in the
same transaction as the change, to one ``signback.deliver`` outbox action per enabled
endpoint whose filters match (``emit.py``). The dispatcher sends those actions like any
other, in lanes of their own (``lanes.py``): signed with the Standard Webhooks scheme
(``signing.py``), to checked addresses only (``safety.py``), with secrets stored encrypted
(``secrets.py``). ``deliver.py`` is the operation, ``manage.py`` what the admin API and the
CLI do with endpoints.
"""

from __future__ import annotations

from receiver import jsonutil

DELIVER_OPERATION = "signback.deliver"
LANE_PREFIX = "endpoint:"


def lane_of(endpoint_id: int) -> str:
    """The outbox lane of the deliveries to one endpoint."""
    return f"{LANE_PREFIX}{endpoint_id}"


def endpoint_of_lane(lane: str) -> int | None:
    """The endpoint id of a delivery lane; None for another lane."""
    if not lane.startswith(LANE_PREFIX):
        return None
    tail = lane[len(LANE_PREFIX) :]
    return int(tail) if tail.isascii() and tail.isdigit() else None


def delivery_of(payload: str) -> tuple[int, int] | None:
    """(event id, endpoint id) of a delivery action's payload; None if it names neither."""
    try:
        value = jsonutil.loads(payload)
        return int(value["event"]), int(value["endpoint"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
