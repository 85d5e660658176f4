"""Another process holding SQLite's write lock (a CLI command, a second process on the same
file) used to freeze the event loop: every write on the serving connection waited out the
busy timeout on the loop, and health checks and acknowledgements waited with it. Now each
call on the loop waits at most a few milliseconds, and the rest of the wait is
asynchronous: /healthz and /readyz answer at once, reads answer, and a callback that cannot
be stored gets a 503 with Retry-After, never an acknowledgement."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from handlers.firma import signature
from receiver.settings import Settings
from tests.harness import running_receiver

FIRMA_SECRET = "firma-test-secret"

HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextmanager
def write_lock_held(path: str) -> Iterator[None]:
    """Another process holds the database's write lock until the block ends."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdin is not None
        try:
            assert holder.stdout.readline().strip() == "locked"
            yield
        finally:
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.wait(10)


def firma_event(n: int) -> tuple[bytes, dict[str, str]]:
    body = f'{{"id":"evt-lock-{n}","type":"signing_request.sent"}}'.encode()
    header = signature.sign(FIRMA_SECRET, body, int(time.time()))
    return body, {"content-type": "application/json", "x-firma-signature": header}


def test_a_write_lock_held_elsewhere_never_stops_the_loop(
    make_sqlite_settings: Callable[..., Settings],
) -> None:
    with running_receiver(make_sqlite_settings, sqlite_busy_timeout_ms=1500) as receiver:
        path = receiver.settings.database_url.removeprefix("sqlite:///")
        with receiver.client() as client:
            answers: dict[str, httpx.Response] = {}

            def post_callback() -> None:
                body, headers = firma_event(1)
                answers["callback"] = client.post("/hooks/firma", content=body, headers=headers)

            def register() -> None:
                with receiver.admin() as admin:
                    answers["register"] = admin.post(
                        "/api/requests", json={"provider": "firma", "signatureRequestId": "x"}
                    )

            with write_lock_held(path):
                started = time.monotonic()
                writers = [
                    threading.Thread(target=post_callback),
                    threading.Thread(target=register),
                ]
                for writer in writers:
                    writer.start()
                # While the writes wait for the lock, the loop answers everything else.
                slowest = 0.0
                while any(w.is_alive() for w in writers) and time.monotonic() - started < 10:
                    asked = time.monotonic()
                    assert client.get("/healthz").status_code == 200
                    assert client.get("/readyz").status_code == 200
                    with receiver.admin() as admin:
                        assert admin.get("/api/requests").status_code == 200  # reads go on
                    slowest = max(slowest, time.monotonic() - asked)
                for writer in writers:
                    writer.join(10)
                waited = time.monotonic() - started
            assert slowest < 1.0, slowest  # each write waited 1.5 s on the loop before
            assert waited >= 1.4  # the writes waited out the configured busy timeout …
            callback = answers["callback"]
            assert callback.status_code == 503, callback.text  # … and were not acknowledged
            assert callback.headers["retry-after"]
            assert answers["register"].status_code == 503
            assert answers["register"].headers["retry-after"]
            # The lock gone, the provider's retry is stored and acknowledged.
            body, headers = firma_event(1)
            retried = client.post("/hooks/firma", content=body, headers=headers)
            assert retried.status_code == 200, retried.text
            assert retried.json() == {"status": "accepted"}


def test_a_short_lock_is_waited_out_without_a_503(
    make_sqlite_settings: Callable[..., Settings],
) -> None:
    """A lock released within the busy timeout costs the callback a wait, not a refusal."""
    with running_receiver(make_sqlite_settings, sqlite_busy_timeout_ms=3000) as receiver:
        path = receiver.settings.database_url.removeprefix("sqlite:///")
        with receiver.client() as client:
            answers: list[httpx.Response] = []

            def post_callback() -> None:
                body, headers = firma_event(2)
                answers.append(client.post("/hooks/firma", content=body, headers=headers))

            with write_lock_held(path):
                writer = threading.Thread(target=post_callback)
                writer.start()
                time.sleep(0.5)
                assert client.get("/healthz").status_code == 200
            writer.join(10)
        assert answers[0].status_code == 200, answers[0].text
