"""Send-time placeholders in outbox payloads (receiver/outbox/dispatcher.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from receiver.context import CallbackUrls
from receiver.errors import InvalidAction
from receiver.outbox.dispatcher import resolve_placeholders

RETURN = "https://signback.example/return/TOKEN"
SENDINFO = "https://signback.example/hooks/okdokument/TOKEN"
WEBHOOK = "https://signback.example/hooks/firma"

# A request's URLs are a mapping by name; NAMES are every name some provider has.
OKDOKUMENT: CallbackUrls = {"return_url": RETURN, "sendinfo_url": SENDINFO}
FIRMA: CallbackUrls = {"return_url": RETURN, "webhook_url": WEBHOOK}
ALL: CallbackUrls = {**OKDOKUMENT, **FIRMA}
NAMES = frozenset(ALL)


@pytest.mark.parametrize(
    ("value", "urls", "expected"),
    [
        pytest.param("{signback.return_url}", OKDOKUMENT, RETURN, id="return-str"),
        pytest.param("{signback.sendinfo_url}", OKDOKUMENT, SENDINFO, id="sendinfo-str"),
        pytest.param("{signback.webhook_url}", FIRMA, WEBHOOK, id="webhook-str"),
        pytest.param(
            {"resulturl": "{signback.return_url}", "sendInfoURL": "{signback.sendinfo_url}"},
            OKDOKUMENT,
            {"resulturl": RETURN, "sendInfoURL": SENDINFO},
            id="okdokument-patch",
        ),
        pytest.param(
            {
                "completion_redirect_url": "{signback.return_url}",
                "settings": {"hooks": ["{signback.webhook_url}", {"u": "{signback.return_url}"}]},
                "expiration_hours": 48,
            },
            FIRMA,
            {
                "completion_redirect_url": RETURN,
                "settings": {"hooks": [WEBHOOK, {"u": RETURN}]},
                "expiration_hours": 48,
            },
            id="nested-dicts-and-lists",
        ),
        pytest.param(
            [["{signback.return_url}"], [], [[["{signback.sendinfo_url}"]]]],
            ALL,
            [[RETURN], [], [[[SENDINFO]]]],
            id="nested-lists",
        ),
        pytest.param(
            {"{signback.return_url}": "kept"},
            ALL,
            {"{signback.return_url}": "kept"},
            id="keys-are-not-placeholders",
        ),
    ],
)
def test_placeholders_are_resolved(value: Any, urls: CallbackUrls, expected: Any) -> None:
    assert resolve_placeholders(value, urls, NAMES) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("https://example.com/done", id="url"),
        pytest.param("", id="empty"),
        pytest.param("{signback.unknown_url}", id="unknown-placeholder"),
        pytest.param("{signback.return_url}?lang=sk", id="placeholder-with-suffix"),
        pytest.param("see {signback.return_url}", id="placeholder-inside-text"),
        pytest.param("{SIGNBACK.RETURN_URL}", id="wrong-case"),
        pytest.param(" {signback.return_url}", id="leading-space"),
        pytest.param("signback.return_url", id="no-braces"),
        pytest.param(0, id="zero"),
        pytest.param(1.5, id="float"),
        pytest.param(None, id="none"),
        pytest.param(True, id="bool"),
        pytest.param({}, id="empty-dict"),
        pytest.param([], id="empty-list"),
        pytest.param({"a": ["b", 1, None, {"c": "d"}]}, id="nested-without-placeholders"),
    ],
)
@pytest.mark.parametrize("urls", [OKDOKUMENT, FIRMA], ids=["okdokument", "firma"])
def test_everything_else_is_left_alone(value: Any, urls: CallbackUrls) -> None:
    before = copy.deepcopy(value)
    assert resolve_placeholders(value, urls, NAMES) == before


def test_the_input_payload_is_not_changed() -> None:
    payload: dict[str, Any] = {"a": ["{signback.return_url}"], "b": {"c": "{signback.return_url}"}}
    before = copy.deepcopy(payload)

    resolved = resolve_placeholders(payload, OKDOKUMENT, NAMES)

    assert payload == before
    assert resolved == {"a": [RETURN], "b": {"c": RETURN}}


@pytest.mark.parametrize(
    ("value", "urls", "placeholder"),
    [
        pytest.param(
            "{signback.sendinfo_url}", FIRMA, "{signback.sendinfo_url}", id="sendinfo-firma"
        ),
        pytest.param(
            "{signback.webhook_url}", OKDOKUMENT, "{signback.webhook_url}", id="webhook-ok"
        ),
        pytest.param(
            {"settings": {"urls": ["x", "{signback.sendinfo_url}"]}},
            FIRMA,
            "{signback.sendinfo_url}",
            id="deep-inside-firma-payload",
        ),
        pytest.param(
            {"resulturl": "{signback.return_url}", "hook": "{signback.webhook_url}"},
            OKDOKUMENT,
            "{signback.webhook_url}",
            id="after-a-valid-one",
        ),
    ],
)
def test_a_placeholder_without_a_value_is_an_invalid_action(
    value: Any, urls: CallbackUrls, placeholder: str
) -> None:
    with pytest.raises(InvalidAction) as caught:
        resolve_placeholders(value, urls, NAMES)
    assert placeholder in str(caught.value)
    assert "no meaning for this provider" in str(caught.value)


def test_any_provider_url_name_is_a_placeholder() -> None:
    """A provider's own URL names work as placeholders, with no change to the core."""
    urls: CallbackUrls = {"return_url": RETURN, "events_url": "https://sb.example/hooks/acme"}
    names = NAMES | {"events_url"}
    assert resolve_placeholders({"u": "{signback.events_url}"}, urls, names) == {
        "u": "https://sb.example/hooks/acme"
    }
    with pytest.raises(InvalidAction, match="no meaning for this provider"):
        resolve_placeholders("{signback.events_url}", OKDOKUMENT, names)
