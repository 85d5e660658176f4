"""Nothing token-shaped reaches the attempt log, a log line or the admin API, whatever a
provider echoes back: OKdokument answering an update with an error that quotes the
``sendInfoURL`` it was sent (the request's hook token in it), on both databases."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from starlette.responses import JSONResponse, Response

from receiver.settings import Settings
from tests.harness import running_receiver, wait_until
from tests.servers import Recorded, Recorder, running_server


def echoing_error(request: Recorded) -> Response:
    """An OKdokument that refuses the update, quoting everything it was sent."""
    sent = json.loads(request.body or b"{}")
    return JSONResponse(
        {
            "message": f"invalid sendInfoURL {sent.get('sendInfoURL')}",
            "value": request.body.decode(),
        },
        status_code=400,
    )


def test_a_provider_echoing_a_token_never_has_it_stored_logged_or_shown(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = Recorder(echoing_error)
    with (
        running_server(recorder) as okdokument,
        running_receiver(make_settings, okdokument_base_url=okdokument) as receiver,
    ):
        registered = receiver.register(
            provider="okdokument", signatureRequestId="sr-echo", documentId="doc-echo"
        )
        token = str(registered["callback_urls"]["sendinfo_url"]).rsplit("/", 1)[1]
        (action,) = receiver.wait_for_actions(registered["id"], settled=1)
        assert recorder.requests, "the update was sent"
        assert token.encode() in recorder.requests[0].body  # the provider did get it
        assert action["status"] == "dead"  # a 400 is final
        # The admin sees the request's own callback URLs on purpose; the actions, never.
        shown = json.dumps(receiver.show(registered["id"])["actions"])
        with receiver.admin() as admin:
            listed = admin.get("/api/outbox", params={"status": "dead"}).text
    logged = capsys.readouterr().err
    assert "invalid sendInfoURL" in action["last_error"]  # the message is kept …
    assert "[token]" in action["last_error"]  # … with the token cut out
    assert "[token]" in action["attempt_log"][0]["response_excerpt"]
    for where, text in (("show", shown), ("outbox list", listed), ("log", logged)):
        assert token not in text, where
    assert "invalid sendInfoURL" in logged


def test_an_endpoint_echoing_its_url_token_never_has_it_stored_or_shown(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    """A downstream endpoint whose URL carries a credential (``?key=…``) and whose error
    answer quotes the URL: the delivery's attempt log, the endpoint's last failure and the
    log lines keep the words, not the credential."""
    key = "Zx81KqP0aLm3VbN7cR2tY9wE4uI6oS5d"

    def refuse(request: Recorded) -> Response:
        return JSONResponse({"error": f"bad key in {request.target.decode()}"}, status_code=400)

    recorder = Recorder(refuse)
    with (
        running_server(recorder) as endpoint_base,
        running_receiver(make_settings, endpoint_allow_private=True) as receiver,
        receiver.admin() as admin,
    ):
        created = admin.post("/api/endpoints", json={"url": f"{endpoint_base}/hook?key={key}"})
        assert created.status_code == 201, created.text
        endpoint_id = created.json()["id"]
        assert admin.post(f"/api/endpoints/{endpoint_id}/test").status_code == 202

        def attempted() -> list[dict[str, object]] | None:
            items = admin.get(f"/api/endpoints/{endpoint_id}/deliveries").json()["items"]
            return items if items and items[0]["attempt_log"] else None

        deliveries = wait_until(attempted, what="the test delivery tried")
        assert recorder.requests  # it reached the endpoint, key and all
        shown = admin.get(f"/api/endpoints/{endpoint_id}").json()
    logged = capsys.readouterr().err
    assert "bad key in /hook?key=[token]" in str(deliveries[0]["attempt_log"])
    assert shown.pop("url").endswith(key)  # the admin's own configuration, shown as set
    for where, text in (("deliveries", str(deliveries)), ("endpoint", str(shown)), ("log", logged)):
        assert key not in text, where
