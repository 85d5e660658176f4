"""The intake's count of callbacks in flight (receiver/loadshare.py, kept by the router and
the shared steps in receiver/intake/hooks.py) comes back to zero after every kind of answer:
stored, duplicate, refused, unknown URL, and a store that cannot write (503). A count left
over would make the governor see a flood that is not there, or miss one that is."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import httpx

from receiver.app import create_app
from receiver.intake.protocol import HookHttpProtocol
from receiver.intake.router import HookRouter
from receiver.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.servers import bound_socket, running_server

GOOD = b'{"state":"signed","id":"doc-1","signatureRequestId":"sr-1"}'
JSON = {"content-type": "application/json"}


def test_every_answer_gives_its_count_back(make_sqlite_settings: Callable[..., Settings]) -> None:
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = make_sqlite_settings(
        public_url=url, okdokument_base_url="http://127.0.0.1:9", sqlite_busy_timeout_ms=200
    )
    app = create_app(settings)
    assert isinstance(app, HookRouter)
    load = app.load
    with running_server(app, sock=sock, http=HookHttpProtocol):
        with httpx.Client(
            base_url=url, timeout=10, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as admin:
            made = admin.post(
                "/api/requests",
                json={
                    "provider": "okdokument",
                    "signatureRequestId": "sr-1",
                    "documentId": "doc-1",
                },
            )
        assert made.status_code == 201, made.text
        hook = str(made.json()["callback_urls"]["sendinfo_url"]).removeprefix(url)
        with httpx.Client(base_url=url, timeout=30) as client:
            answers = [
                client.post(hook, content=GOOD, headers=JSON).status_code,  # stored
                client.post(hook, content=GOOD, headers=JSON).status_code,  # duplicate
                client.post(hook, content=b"{not json", headers=JSON).status_code,
                client.post(
                    "/hooks/okdokument/not-a-token", content=GOOD, headers=JSON
                ).status_code,
            ]
            path = settings.database_url.removeprefix("sqlite:///")
            blocker = sqlite3.connect(path, timeout=0.1, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")  # the store cannot write: 503
            try:
                body = GOOD.replace(b"signed", b"tosign")
                answers.append(client.post(hook, content=body, headers=JSON).status_code)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
        assert answers == [200, 200, 400, 404, 503]
        assert (load.in_flight, load.waiting_now) == (0, 0)
        assert load.area > 0  # they were counted while they were answered
