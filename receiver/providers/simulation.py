"""What every provider's ``signback simulate <provider>`` shares: the request it simulates
for, and what was sent (printed with tokens cut out)."""

from __future__ import annotations

from dataclasses import dataclass

from receiver.context import AppContext
from receiver.errors import SignbackError
from receiver.store import requests
from receiver.store.db.base import Row


@dataclass(frozen=True)
class Sent:
    what: str
    method: str
    url: str  # with the token cut out: printed to a terminal
    status: int
    answer: str


def redacted(url: str, token: str) -> str:
    return url.replace(token, "[token]")


async def load_request(ctx: AppContext, request_id: int, provider: str) -> Row:
    """The registered request ``request_id``, which must be ``provider``'s."""
    row = await requests.get(ctx.db, request_id)
    if row is None:
        raise SignbackError(f"no request with id {request_id}")
    if row["provider"] != provider:
        raise SignbackError(f"request {request_id} is a {row['provider']} request")
    return row
