"""The callback short path (receiver/intake/protocol.py) answers exactly as uvicorn's ASGI
path does, on the wire: each case runs against both (and against the guarded protocol
without the short path, a fallback of `signback serve`), over raw sockets where HTTP details
(pipelining, HTTP/1.0, ``Expect: 100-continue``, a client leaving mid-body) matter."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httptools
import pytest

from receiver.app import create_app
from receiver.intake import protocol as hook_protocol
from receiver.intake.guarded_protocol import GuardedHttpProtocol
from receiver.intake.protocol import HookHttpProtocol
from receiver.settings import Settings
from tests.harness import Receiver, running_receiver
from tests.servers import bound_socket, running_server

GOOD = b'{"state":"signed","id":"doc-1","signatureRequestId":"sr-1"}'
# `signback serve` falls back to the second or third when the installed uvicorn lacks what
# the first relies on (receiver/intake/uvicorn_compat.py): the answers must be the same.
PROTOCOLS: dict[str, type[asyncio.Protocol] | Literal["httptools"]] = {
    "short path": HookHttpProtocol,
    "guarded, without the short path": GuardedHttpProtocol,
    "uvicorn's ASGI path": "httptools",
}


@pytest.fixture(params=list(PROTOCOLS))
def receiver(
    request: pytest.FixtureRequest, make_sqlite_settings: Callable[..., Settings]
) -> Iterator[Receiver]:
    # No emulator: the attach PATCH fails in the background, which is irrelevant here.
    with running_receiver(
        make_sqlite_settings,
        http=PROTOCOLS[request.param],
        okdokument_base_url="http://127.0.0.1:9",
    ) as r:
        yield r


@pytest.fixture
def hook(receiver: Receiver) -> str:
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-1", documentId="doc-1"
    )
    return str(registered["callback_urls"]["sendinfo_url"]).removeprefix(receiver.url)


@dataclass
class WireAnswer:
    status: int = 0
    complete: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


class _Collector:
    """httptools callbacks collecting every answer on a connection."""

    def __init__(self) -> None:
        self.answers: list[WireAnswer] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.answers.append(WireAnswer())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answers[-1].headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.answers[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.answers[-1].body += body

    def on_message_complete(self) -> None:
        self.answers[-1].complete = True


def exchange(
    receiver: Receiver, *parts: bytes, answers: int, pause_for: bytes | None = None
) -> tuple[list[WireAnswer], bool]:
    """Send ``parts`` on one connection; read until ``answers`` complete answers (skipping a
    ``100 Continue``). With ``pause_for``, wait for those bytes after the first part.
    Returns the answers and whether the server closed the connection afterwards."""
    host, port = receiver.url.removeprefix("http://").split(":")
    collector = _Collector()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(parts[0])
        if pause_for is not None:
            seen = b""
            while pause_for not in seen:
                seen += sock.recv(1024)
        for part in parts[1:]:
            sock.sendall(part)
        received = 0
        while received < answers:
            data = sock.recv(65536)
            if not data:
                break
            collector.parser.feed_data(data)
            received = sum(1 for a in collector.answers if a.complete and a.status >= 200)
        sock.settimeout(0.5)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
    return [a for a in collector.answers if a.status >= 200], closed


def post(path: str, body: bytes, *extra: bytes, version: bytes = b"1.1") -> bytes:
    head = [
        b"POST " + path.encode() + b" HTTP/" + version,
        b"host: 127.0.0.1",
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


GET_HEALTH = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"


def test_pipelined_requests_are_answered_in_order(receiver: Receiver, hook: str) -> None:
    answers, closed = exchange(
        receiver,
        post(hook, GOOD) + post(hook, GOOD) + GET_HEALTH + post(hook, b"{bad") + GET_HEALTH,
        answers=5,
    )
    assert [(a.status, a.json()) for a in answers[:3]] == [
        (200, {"status": "accepted"}),
        (200, {"status": "duplicate"}),
        (200, {"status": "ok"}),
    ]
    assert answers[3].status == 400
    assert "not valid JSON" in answers[3].json()["error"]
    assert answers[4].status == 200
    assert not closed  # keep-alive


def test_answers_carry_the_usual_headers(receiver: Receiver, hook: str) -> None:
    (health, answer), _ = exchange(
        receiver,
        GET_HEALTH + post(hook, GOOD, b"x-request-id: abc-123", b"connection: close"),
        answers=2,
    )
    assert answer.status == 200
    assert answer.headers["x-request-id"] == "abc-123"
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(answer.body)
    assert answer.headers["date"].endswith(" GMT")
    assert answer.headers["connection"] == "close"
    # uvicorn's default headers (date, and server unless turned off) as on any other answer
    assert answer.headers.get("server") == health.headers.get("server")


def test_http_1_0_gets_its_answer_and_the_connection_closed(receiver: Receiver, hook: str) -> None:
    (answer,), closed = exchange(receiver, post(hook, GOOD, version=b"1.0"), answers=1)
    assert (answer.status, answer.json()) == (200, {"status": "accepted"})
    assert closed


def test_expect_100_continue_is_honoured(receiver: Receiver, hook: str) -> None:
    whole = post(hook, GOOD, b"expect: 100-continue")
    head, _, body = whole.partition(b"\r\n\r\n")
    (answer,), _ = exchange(
        receiver, head + b"\r\n\r\n", body, answers=1, pause_for=b"100 Continue"
    )
    assert (answer.status, answer.json()) == (200, {"status": "accepted"})


def test_a_body_in_several_packets_and_a_large_one(receiver: Receiver, hook: str) -> None:
    whole = post(hook, GOOD)
    answers, _ = exchange(receiver, whole[:-20], whole[-20:], answers=1)
    assert answers[0].json() == {"status": "accepted"}
    # Over 64 KiB (the short path's limit) and under max_body_bytes: uvicorn's path.
    big = GOOD[:-1] + b" " * 70_000 + b"}"
    answers, _ = exchange(receiver, post(hook, big), answers=1)
    assert answers[0].json() == {"status": "accepted"}
    too_big = GOOD[:-1] + b" " * receiver.settings.max_body_bytes + b"}"
    answers, _ = exchange(receiver, post(hook, too_big), answers=1)
    assert answers[0].status == 413


def test_a_client_leaving_mid_body_does_not_disturb_the_next(receiver: Receiver, hook: str) -> None:
    host, port = receiver.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(post(hook, GOOD)[:-10])
    answers, _ = exchange(receiver, post(hook, GOOD), answers=1)
    assert answers[0].json() == {"status": "accepted"}  # the cut one was never stored


def test_a_content_length_with_thousands_of_leading_zeros(receiver: Receiver, hook: str) -> None:
    # Legal HTTP, and more digits than Python's int() takes from a string by default.
    request = post(hook, GOOD).replace(b"content-length: ", b"content-length: " + b"0" * 5000, 1)
    answers, _ = exchange(receiver, request, answers=1)
    assert (answers[0].status, answers[0].json()) == (200, {"status": "accepted"})


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_a_shutdown_that_runs_out_of_time_answers_a_waiting_callback(
    protocol: str, make_sqlite_settings: Callable[..., Settings]
) -> None:
    """A callback whose body never completes holds up a graceful shutdown until uvicorn's
    timeout cancels it: the client then gets a 500 and a closed connection, not silence."""
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = make_sqlite_settings(public_url=url, okdokument_base_url="http://127.0.0.1:9")
    serving = running_server(
        create_app(settings), sock=sock, http=PROTOCOLS[protocol], shutdown_timeout=1
    )
    serving.__enter__()
    stopper = threading.Thread(target=serving.__exit__, args=(None, None, None))
    try:
        r = Receiver(url, settings)
        registered = r.register(
            provider="okdokument", signatureRequestId="sr-1", documentId="doc-1"
        )
        path = str(registered["callback_urls"]["sendinfo_url"]).removeprefix(url)
        with socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=10) as c:
            c.sendall(post(path, GOOD)[:-5])
            stopper.start()
            received = b""
            while chunk := c.recv(65536):
                received += chunk
    finally:
        if stopper.ident is None:  # failed before the shutdown began
            serving.__exit__(None, None, None)
        else:
            stopper.join(30)
    assert received.startswith(b"HTTP/1.1 500 "), received
    assert b"connection: close" in received.lower()


def test_refusals_on_the_hook_routes(receiver: Receiver, hook: str) -> None:
    wrong_method = b"PUT " + hook.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
    chunked = (
        b"POST " + hook.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(GOOD) + GOOD + b"\r\n0\r\n\r\n"
    )
    answers, _ = exchange(
        receiver,
        wrong_method
        + post("/hooks/okdokument/" + "A" * 43, GOOD)
        + post("/hooks/nobody", GOOD)
        + chunked
        + post(hook, GOOD, b"content-type: text/plain"),
        answers=5,
    )
    assert [a.status for a in answers] == [405, 404, 404, 200, 415]
    assert answers[0].headers["allow"] == "POST"
    assert answers[3].json() == {"status": "accepted"}


def test_callbacks_really_take_the_short_path(
    make_sqlite_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[str] = []
    run = hook_protocol.CallbackCycle.run_asgi

    async def counted(self: hook_protocol.CallbackCycle, app: object) -> None:
        taken.append(self.path)
        await run(self, app)

    monkeypatch.setattr(hook_protocol.CallbackCycle, "run_asgi", counted)
    with running_receiver(make_sqlite_settings, okdokument_base_url="http://127.0.0.1:9") as r:
        registered = r.register(
            provider="okdokument", signatureRequestId="sr-1", documentId="doc-1"
        )
        path = str(registered["callback_urls"]["sendinfo_url"]).removeprefix(r.url)
        answers, _ = exchange(r, post(path, GOOD) + GET_HEALTH + post("/hooks/x", GOOD), answers=3)
    assert [a.status for a in answers] == [200, 200, 404]
    assert taken == [path]  # not the health check, not an unknown hook
