"""Token-shaped runs are cut out of an outcome before the attempt log stores it, and out of
the free-text values of every log line (receiver/outbox/outcomes.py, receiver/logs.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from receiver.logs import configure_logging, get_logger, shown
from receiver.outbox.outcomes import Deferred, Done, Failed, GiveUp, Skipped, Throttled, redacted

TOKEN = "ucdfG9XrXYOQDCAGFVa1b2c3OTIH0DQ5BQZBSCmY7GM"
URL = f"https://signback.example/hooks/okdokument/{TOKEN}"


@pytest.mark.parametrize(
    "outcome",
    [
        Failed(f"invalid sendInfoURL {URL}", 400, None, f'{{"value":"{URL}"}}'),
        GiveUp(f"refused {URL}", response_excerpt=URL),
        Skipped(f"not now: {URL}", response_excerpt=URL),
        Throttled(429, 1.0, f"slow down {URL}", URL),
        Deferred(1.0, f"budget for {URL}"),
        Done(200, URL),
    ],
)
def test_an_outcome_keeps_its_words_and_loses_its_tokens(outcome: object) -> None:
    cleaned = redacted(outcome)  # type: ignore[arg-type]
    assert type(cleaned) is type(outcome)
    assert TOKEN not in repr(cleaned)
    assert "[token]" in cleaned.message + cleaned.response_excerpt


def test_an_outcome_without_tokens_is_the_same_object() -> None:
    outcome = Failed("the provider did not answer in time")
    assert redacted(outcome) is outcome


def test_an_http_library_error_quoting_a_url_is_logged_without_its_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")
    log = get_logger("test")
    error = httpx.ConnectError(f"cannot connect to {URL}")
    try:
        raise error
    except httpx.ConnectError as exc:
        log.exception("call failed", error=str(exc), reason=f"see {URL}")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert TOKEN not in json.dumps(line)
    assert line["error"] == "cannot connect to https://signback.example/hooks/okdokument/[token]"
    assert "[token]" in line["exception"]


def test_a_stored_value_is_shown_without_tokens() -> None:
    assert shown(f"old row: {URL}") == "old row: https://signback.example/hooks/okdokument/[token]"
    assert shown(None) is None
    assert shown(5) == 5
