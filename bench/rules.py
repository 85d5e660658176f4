"""Business rules for the benchmark (``SIGNBACK_RULES_MODULE=bench.rules``).

One PATCH per OKdokument callback that carries a ``bench`` sequence number and reports an
informational state (``tostamp``/``tags``: confirmed, no state change, so the rule runs on
every one of them). The sequence number travels in the PATCH body's ``resulturl``, so the
bench can match each callback with the PATCH it caused in the emulator's call log.
Callbacks without ``bench`` are left alone: the shipped rules still apply as usual.
"""

from __future__ import annotations

from collections.abc import Iterator

from handlers.okdokument.operations import PATCH
from receiver.events import EventKind, NormalizedEvent
from receiver.model import Action, SignatureRequest
from receiver.pipeline.rules import rule

RESULT_URL = "http://127.0.0.1:9/bench/{seq}"


def seq_of(result_url: str) -> int | None:
    """The sequence number a PATCH's ``resulturl`` carries (None if it is not ours)."""
    prefix = RESULT_URL.split("{", 1)[0]
    if not result_url.startswith(prefix):
        return None
    tail = result_url[len(prefix) :]
    return int(tail) if tail.isdigit() else None


@rule(EventKind.INFORMATIONAL, provider="okdokument")
def patch_per_callback(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    seq = event.raw.get("bench")
    if isinstance(seq, int) and not isinstance(seq, bool):
        yield Action(
            PATCH, {"resulturl": RESULT_URL.format(seq=seq)}, key=f"bench:{event.event_id}"
        )
