"""The signer's browser back from Testsign: ``?event=signing_complete|cancel|decline``."""

from __future__ import annotations

from receiver.intake.returns import query_params
from receiver.providers.contract import ReturnFacts


def parse_return(query: str) -> ReturnFacts:
    params = query_params(query)
    event = params.get("event", "")[:50] or None
    return ReturnFacts(
        result=event,
        retry=event == "cancel",
        details={"event": event} if event else {},
        raw=params,
    )
