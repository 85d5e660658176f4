"""Screenshots of the console's main pages: ``.venv/bin/python scripts/screenshots.py``.

Starts signback on a scratch SQLite file (its worker running), gives it a small story -
requests registered through the API while the provider cannot be reached (so their first
action dies), a callback refused for a forged signature, an endpoint that fails - and
photographs each page with the system Chromium into docs/console/*.png (README shows them).
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers.firma.signature import sign  # noqa: E402
from receiver.app import create_app  # noqa: E402
from receiver.intake.protocol import HookHttpProtocol  # noqa: E402
from receiver.settings import load_settings  # noqa: E402

TOKEN = "screenshot-admin-token-0123"  # noqa: S105 (a scratch instance's)
FIRMA_SECRET = "screenshot-firma-secret"  # noqa: S105
OUT = ROOT / "docs" / "console"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]


@contextmanager
def serving(directory: Path) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = load_settings(
        purpose="screenshots",
        database_url=f"sqlite:///{directory / 'signback.db'}",
        admin_token=TOKEN,
        secret_key="screenshot-secret-key-0123456789-0123",  # noqa: S106
        public_url=url,
        okdokument_base_url="http://127.0.0.1:9",  # unreachable: actions die
        okdokument_api_key="screenshot-key",
        firma_webhook_secrets=[FIRMA_SECRET],
        outbox_max_attempts=2,
        retry_base_delay=0.01,
        retry_max_delay=0.02,
        endpoint_allow_private=True,
        endpoint_max_attempts=1,
        log_level="WARNING",
        _env_file=None,
    )
    config = uvicorn.Config(
        create_app(settings), http=HookHttpProtocol, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def story(url: str) -> int:
    """Requests, a dead action, refusals, an endpoint; returns the request to show."""
    admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    answer = admin.post(
        "/api/endpoints",
        json={"url": "http://127.0.0.1:9/erp/hooks", "description": "ERP (down for maintenance)"},
    )
    assert answer.status_code == 201, answer.text
    endpoint = answer.json()["id"]
    assert admin.post(f"/api/endpoints/{endpoint}/test").status_code == 202  # it fails
    shown = 0
    for n, reference in enumerate(["order-1041", "order-1042", "order-1043", "order-1044"]):
        answer = admin.post(
            "/api/requests",
            json={
                "provider": "okdokument",
                "signatureRequestId": f"sr-{4100 + n}",
                "documentId": f"doc-{4100 + n}",
                "reference": reference,
                "metadata": {"customer": "ACME Oy", "order": reference},
            },
        )
        assert answer.status_code == 201, answer.text
        shown = int(answer.json()["id"])
    body = b'{"id":"evt_8c1","type":"signing_request.completed","data":{"id":"sr-77"}}'
    hooks = httpx.Client(base_url=url, timeout=10)
    for skew in (900, 0):
        hooks.post(
            "/hooks/firma",
            content=body,
            headers={
                "content-type": "application/json",
                "x-firma-signature": sign("an-old-secret", body, int(time.time()) - skew),
            },
        )
    hooks.post("/hooks/firma", content=b"<xml/>", headers={"content-type": "text/xml"})
    time.sleep(2.5)  # the actions die, the rejection log is written
    return shown


def main() -> int:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, serving(Path(scratch)) as url:
        request_id = story(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"{url}/console")
            page.screenshot(path=str(OUT / "signin.png"))
            page.get_by_label("Admin token").fill(TOKEN)
            page.keyboard.press("Enter")
            page.get_by_role("heading", name="Overview").wait_for()
            for name, path in (
                ("overview", "/console"),
                ("requests", "/console/requests"),
                ("request", f"/console/requests/{request_id}"),
                ("failures", "/console/failures"),
                ("endpoints", "/console/endpoints"),
            ):
                page.goto(f"{url}{path}")
                if name == "failures":
                    page.locator("#refused details").first.click()
                page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
                print(f"docs/console/{name}.png")
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
