"""`signback simulate …` sends callbacks a running signback accepts and processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from receiver.settings import Settings
from tests.acceptance.processes import ROOT, signback_env
from tests.harness import Receiver, running_receiver, wait_until


def simulate(receiver: Receiver, *args: str) -> subprocess.CompletedProcess[str]:
    env = signback_env(
        receiver.settings.database_url,
        0,
        SIGNBACK_PUBLIC_URL=receiver.url,
        SIGNBACK_FIRMA_WEBHOOK_SECRETS="firma-test-secret",
        SIGNBACK_OKDOKUMENT_CONFIRM_CALLBACKS="false",
    )
    return subprocess.run(
        [sys.executable, "-m", "receiver.cli", "simulate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_simulated_callbacks_go_through_the_whole_path(
    make_sqlite_settings: Callable[..., Settings],
) -> None:
    with running_receiver(
        make_sqlite_settings,
        okdokument_confirm_callbacks=False,
        okdokument_base_url="http://127.0.0.1:9",
    ) as receiver:
        okd = receiver.register(
            provider="okdokument",
            signatureRequestId="sr-sim",
            return_url="https://shop.example/thanks",
        )
        done = simulate(receiver, "okdokument", str(okd["id"]), "--browser", "success")
        assert done.returncode == 0, done.stderr
        assert "sendInfo signed: POST" in done.stdout
        assert "-> 200" in done.stdout
        assert "-> 303 https://shop.example/thanks" in done.stdout
        assert "[token]" in done.stdout  # the token is never printed
        receiver.wait_for_state(okd["id"], "completed")

        firma = receiver.register(provider="firma", signatureRequestId="sr_sim")
        for event in ("signing_request.sent", "signing_request.viewed"):
            sent = simulate(receiver, "firma", str(firma["id"]), "--event", event)
            assert sent.returncode == 0, sent.stderr + sent.stdout
        old = simulate(
            receiver,
            "firma",
            str(firma["id"]),
            "--event",
            "signing_request.completed",
            "--envelope",
            "old",
        )
        assert old.returncode == 0, old.stderr + old.stdout
        shown = receiver.wait_for_state(firma["id"], "completed")
        assert [e["provider_type"] for e in shown["timeline"]][-3:] == [
            "signing_request.sent",
            "signing_request.viewed",
            "signing_request.completed",
        ]
        wrong = simulate(receiver, "firma", str(okd["id"]))
        assert wrong.returncode == 2
        assert "is a okdokument request" in wrong.stderr
        wait_until(lambda: True)
