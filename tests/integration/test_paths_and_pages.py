"""What odd paths get: a callback token on any path never reaches the log, and every answer
under /return/ (where a signer's browser goes) is an HTML page, never JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from receiver.settings import Settings
from tests.harness import Receiver, running_receiver


@pytest.fixture
def receiver(make_sqlite_settings: Callable[..., Settings]) -> Iterator[Receiver]:
    with running_receiver(make_sqlite_settings, okdokument_base_url="http://127.0.0.1:9") as r:
        yield r


def raw_get(receiver: Receiver, method: str, target: str) -> httpx.Response:
    """A request whose target is sent exactly as written (no normalisation by the client)."""
    with httpx.Client(timeout=10) as client:
        request = client.build_request(method, receiver.url + "/")
        request.url = request.url.copy_with(raw_path=target.encode())
        return client.send(request)


def test_a_token_on_a_non_canonical_path_never_reaches_the_log(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-1", documentId="doc-1"
    )
    token = str(registered["callback_urls"]["sendinfo_url"]).rsplit("/", 1)[1]
    capsys.readouterr()
    targets = [
        f"//hooks/okdokument/{token}",
        f"/hooks//okdokument/{token}",
        f"/Hooks/okdokument/{token}",
        f"//return/{token}",
        f"/return//{token}",
        f"/{token}",
        f"/hooks/firma/{token}",
        f"/api/{token}",
        f"/hooks/okdokument/{token}/extra",
    ]
    statuses = {}
    for target in targets:
        for method in ("GET", "POST"):
            statuses[method, target] = raw_get(receiver, method, target).status_code
    logged = capsys.readouterr().err
    assert all(status >= 400 for status in statuses.values()), statuses
    assert logged.count('"event":"http"') >= len(targets)  # each refusal was logged
    assert token not in logged
    assert "[token]" in logged


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        pytest.param("GET", "/return/%2F%2Fevil.example", 404, id="escaped-slashes"),
        pytest.param("GET", "/return/a/b", 404, id="sub-path"),
        pytest.param("GET", "/return/", 404, id="no-token"),
        pytest.param("GET", "/return", 404, id="bare"),
        pytest.param("POST", "/return/" + "A" * 43, 405, id="wrong-method"),
        pytest.param("DELETE", "/return/x", 405, id="delete"),
        pytest.param("GET", "/return/" + "A" * 43, 404, id="unknown-token"),
    ],
)
def test_every_answer_under_return_is_a_page(
    receiver: Receiver, method: str, target: str, status: int
) -> None:
    answer = raw_get(receiver, method, target)
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.text.startswith("<!doctype html>")
    if status == 405:
        assert set(answer.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_other_paths_keep_their_json_answers(receiver: Receiver) -> None:
    for target in ("/returns/x", "/nothing-here", "//return/x"):
        answer = raw_get(receiver, "GET", target)
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "target",
    [
        "/return/" + "A" * 43 + "/",
        "/return/x/",
        "/healthz/",
        "/readyz/",
        "/api/requests/",
        "/api/requests/1/",
        "/metrics/",
    ],
)
def test_no_redirect_is_ever_built_from_the_host_header(receiver: Receiver, target: str) -> None:
    """A trailing slash used to be redirected (307) to a URL built from the Host header: an
    open redirect for a signer's browser. No path is redirected; /return/ answers a page."""
    with httpx.Client(timeout=10) as client:
        request = client.build_request("GET", receiver.url + "/", headers={"host": "evil.example"})
        request.url = request.url.copy_with(raw_path=target.encode())
        answer = client.send(request)
    assert answer.status_code in (401, 404)  # /api and /metrics ask for the token first
    assert "location" not in answer.headers
    assert "evil.example" not in answer.text
    if target.startswith("/return/"):
        assert answer.headers["content-type"].startswith("text/html")
