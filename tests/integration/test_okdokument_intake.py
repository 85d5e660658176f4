"""Every bad OKdokument callback gets a clear 4xx with a reason, is logged, and stores
nothing; the browser return always answers a person with HTML or a redirect."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from receiver.settings import Settings
from tests.harness import Receiver, running_receiver, wait_until


@pytest.fixture
def receiver(make_settings: Callable[..., Settings]) -> Iterator[Receiver]:
    # No emulator: the attach PATCH fails in the background, which is irrelevant here.
    with running_receiver(make_settings, okdokument_base_url="http://127.0.0.1:9") as r:
        yield r


@pytest.fixture
def registered(receiver: Receiver) -> dict[str, Any]:
    return receiver.register(
        provider="okdokument",
        signatureRequestId="sr-1",
        documentId="doc-1",
        return_url="https://shop.example/thanks",
        retry_url="https://shop.example/retry",
    )


def hook_path(registered: dict[str, Any], receiver: Receiver) -> str:
    return str(registered["callback_urls"]["sendinfo_url"]).removeprefix(receiver.url)


def return_path(registered: dict[str, Any], receiver: Receiver) -> str:
    return str(registered["callback_urls"]["return_url"]).removeprefix(receiver.url)


GOOD = b'{"state":"signed","id":"doc-1","signatureRequestId":"sr-1"}'


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "not valid JSON"),
        (b"[1,2]", {"content-type": "application/json"}, 400, "must be a JSON object"),
        (b"\xff\xfe", {"content-type": "application/json"}, 400, "not valid JSON"),
        (
            b'{"state":"signed","id":"doc-1"}',
            {"content-type": "application/json"},
            400,
            "no signatureRequestId",
        ),
        (
            b'{"id":"doc-1","signatureRequestId":"sr-1"}',
            {"content-type": "application/json"},
            400,
            "no state",
        ),
        (
            b'{"state":"signed","id":"doc-1","signatureRequestId":"sr-OTHER"}',
            {"content-type": "application/json"},
            409,
            "does not belong",
        ),
        (GOOD, {"content-type": "text/plain"}, 415, "application/json"),
        (GOOD, {"content-type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        (
            b"{" + b" " * (1024 * 1024) + b"}",
            {"content-type": "application/json"},
            413,
            "larger than",
        ),
    ],
)
def test_bad_sendinfo_is_refused_with_a_reason(
    receiver: Receiver,
    registered: dict[str, Any],
    body: bytes,
    headers: dict[str, str],
    status: int,
    reason: str,
) -> None:
    with receiver.client() as client:
        response = client.post(hook_path(registered, receiver), content=body, headers=headers)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert len(receiver.show(registered["id"])["timeline"]) == 1  # only the registration


def test_a_chunked_oversized_body_is_refused_without_content_length(
    receiver: Receiver, registered: dict[str, Any]
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 65536

    with receiver.client() as client:
        response = client.post(
            hook_path(registered, receiver),
            content=chunks(),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413


def test_unknown_tokens_and_wrong_methods(receiver: Receiver, registered: dict[str, Any]) -> None:
    path = hook_path(registered, receiver)
    forged = path[:-4] + ("AAAA" if not path.endswith("AAAA") else "BBBB")
    with receiver.client() as client:
        assert client.post(forged, content=GOOD).status_code == 404
        assert client.post("/hooks/okdokument/short", content=GOOD).status_code == 404
        assert client.post("/hooks/okdokument/" + "x" * 5000, content=GOOD).status_code == 404
        assert client.get(path).status_code == 405
        assert client.put(path, content=GOOD).status_code == 405
        # Accepted: no content type at all, and a query string on the URL (both undocumented).
        ok = client.post(path + "?arg=123456", content=GOOD)
        assert ok.status_code == 200
        assert ok.json() == {"status": "accepted"}


def test_the_token_never_reaches_the_log(
    receiver: Receiver, registered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    token = hook_path(registered, receiver).rsplit("/", 1)[1]
    with receiver.client() as client:
        client.post(
            hook_path(registered, receiver),
            content=GOOD,
            headers={"content-type": "application/json"},
        )
        client.get(return_path(registered, receiver) + "?result=success")
        client.post(hook_path(registered, receiver), content=b"{bad")
    seen: list[str] = []

    def logged() -> bool:
        # The access line is written just after the answer is sent, the pipeline's lines
        # when it has processed the two accepted callbacks: collect until all have shown.
        seen.extend(capsys.readouterr())
        text = "".join(seen)
        return "/hooks/okdokument/[token]" in text and text.count("event processed") >= 2

    wait_until(logged, timeout=10, what="the access log line and the pipeline's lines")
    assert token not in "".join(seen)


def test_browser_return_redirects_to_the_registered_pages(
    receiver: Receiver, registered: dict[str, Any]
) -> None:
    path = return_path(registered, receiver)
    with receiver.client() as client:
        ok = client.get(
            path,
            params={
                "name": "doc",
                "docid": "doc-1",
                "lang": "en",
                "result": "success",
                "ts": "1651376054875",
            },
        )
        assert ok.status_code == 303
        assert ok.headers["location"] == "https://shop.example/thanks"
        closed = client.get(path, params={"result": "close"})
        assert closed.status_code == 303
        assert closed.headers["location"] == "https://shop.example/retry"
        unknown = client.get("/return/" + "A" * 43)
        assert unknown.status_code == 404
        assert unknown.headers["content-type"].startswith("text/html")
        assert "not recognised" in unknown.text


def test_browser_return_without_a_return_url_shows_a_page(receiver: Receiver) -> None:
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-page", documentId="doc-page"
    )
    with receiver.client() as client:
        page = client.get(return_path(registered, receiver), params={"result": "success"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "recorded" in page.text


def test_a_store_outage_is_a_503_not_a_500(make_sqlite_settings: Callable[..., Settings]) -> None:
    """If the database refuses the write, the callback is not acknowledged: 503, retry."""
    import sqlite3

    with running_receiver(
        make_sqlite_settings, okdokument_base_url="http://127.0.0.1:9", sqlite_busy_timeout_ms=200
    ) as r:
        registered = r.register(
            provider="okdokument", signatureRequestId="sr-1", documentId="doc-1"
        )
        path = r.settings.database_url.removeprefix("sqlite:///")
        blocker = sqlite3.connect(path, timeout=0.1, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # readers and writers now wait, then give up
        try:
            with httpx.Client(base_url=r.url, timeout=30) as client:
                response = client.post(
                    hook_path(registered, r),
                    content=GOOD,
                    headers={"content-type": "application/json"},
                )
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
