"""The signer's browser coming back to the result URL (``/return/<token>``).

OKdokument adds ``name``, ``docid``, ``lang``, ``result`` (``success``, ``close`` or
``mobile``) and ``ts`` (milliseconds). It is a person's browser, not the provider: the
values are recorded, never trusted for the state. ``result=close`` (the signer closed the
page without signing) sends the browser to the request's retry URL, when it has one.
"""

from __future__ import annotations

import re
from typing import Any

from receiver.events import RAW_TIME_CHARS, plausible_time
from receiver.intake.returns import query_params
from receiver.providers.contract import ReturnFacts

_MILLIS = re.compile(r"[0-9]{1,15}")  # ASCII digits only; a plausible unix time in ms
KEPT = ("result", "lang", "docid", "name")
MAX_VALUE = 200


def parse_return(query: str) -> ReturnFacts:
    params = query_params(query)
    details: dict[str, Any] = {key: params[key][:MAX_VALUE] for key in KEPT if key in params}
    occurred_at = None
    if "ts" in params:
        if _MILLIS.fullmatch(params["ts"]):
            occurred_at = plausible_time(int(params["ts"]) / 1000.0)
        if occurred_at is None:  # a browser can send anything: keep it, never as a time
            details["occurred_at_raw"] = params["ts"][:RAW_TIME_CHARS]
    result = details.get("result")
    return ReturnFacts(
        result=result,
        retry=result == "close",
        occurred_at=occurred_at,
        details=details,
        raw=params,
    )
