"""A company's receiver for signback's events, in Python, verified with `standardwebhooks`.

    pip install standardwebhooks
    SIGNBACK_WEBHOOK_SECRET=whsec_… python receiver.py --port 9000

Then add the endpoint in signback: `signback endpoints add --url https://…/signback`.
Everything here is the standard library but the verifier. It checks the signature over the
raw body (never over re-encoded JSON), refuses anything older or newer than five minutes,
answers quickly (do the work later, e.g. in a queue), and handles each `webhook-id` once:
signback delivers at least once, so a retry or a replay of an event comes with the id it
came with the first time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY = 1024 * 1024
SEEN: set[str] = set()  # a real receiver keeps this in its database, with the work


class Handler(BaseHTTPRequestHandler):
    webhook: Webhook

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            self.send_response(413)
            self.end_headers()
            return
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            event = self.webhook.verify(body, headers)
        except WebhookVerificationError as exc:
            print(f"refused: {exc}", flush=True)
            self.send_response(400)
            self.end_headers()
            return
        message_id = headers["webhook-id"]
        if message_id not in SEEN:  # once per webhook-id, however often it comes
            SEEN.add(message_id)
            handle(event)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return  # quiet; print() above says what matters


def handle(event: dict[str, object]) -> None:
    """Your business: here, one line per event."""
    data = event["data"]
    assert isinstance(data, dict)
    request = data.get("request") or {}
    print(
        json.dumps(
            {
                "type": event["type"],
                "event": event["id"],
                "request": request.get("id"),
                "reference": request.get("reference"),
                "state": request.get("state"),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    secret = os.environ.get("SIGNBACK_WEBHOOK_SECRET")
    if not secret:
        sys.exit("set SIGNBACK_WEBHOOK_SECRET to the endpoint's secret (whsec_…)")
    Handler.webhook = Webhook(secret)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
