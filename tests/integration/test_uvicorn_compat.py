"""`signback serve` checks the installed uvicorn for what its HTTP protocols rely on
(receiver/intake/uvicorn_compat.py), and falls back with one warning when something is missing.

A missing attribute is simulated two ways: by removing a method from uvicorn's protocol
class (for the check alone), and by adding a name the check asks for that uvicorn never
had (for serving: uvicorn itself must keep working). That the fallback protocols give the
same answers is shown on the wire by tests/integration/test_hook_protocol.py, which runs
every case through each of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from receiver import cli
from receiver.intake import uvicorn_compat
from receiver.intake.guarded_protocol import GuardedHttpProtocol
from receiver.intake.protocol import HookHttpProtocol
from receiver.settings import Settings
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.harness import running_receiver


def test_the_installed_uvicorn_has_everything() -> None:
    compatibility = uvicorn_compat.check()
    assert compatibility.guard_missing == ()
    assert compatibility.short_path_missing == ()
    assert compatibility.protocol is HookHttpProtocol
    assert compatibility.warning is None


def test_a_method_gone_from_uvicorn_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The guard (its pipelining bound) and the short path both build on it: without it,
    # uvicorn's own protocol serves.
    monkeypatch.delattr(HttpToolsProtocol, "on_response_complete")
    compatibility = uvicorn_compat.check()
    assert compatibility.guard_missing == ("HttpToolsProtocol.on_response_complete()",)
    assert compatibility.short_path_missing == ("HttpToolsProtocol.on_response_complete()",)
    assert compatibility.protocol == "httptools"
    warning = compatibility.warning
    assert warning is not None
    assert f"uvicorn {uvicorn.__version__} lacks HttpToolsProtocol.on_response_complete()" in (
        warning
    )
    assert "serving with uvicorn's own protocol" in warning


def test_a_cycle_attribute_uvicorn_starts_to_use_is_noticed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If uvicorn's protocol starts touching an attribute of the cycle in its slot that
    CallbackCycle lacks, the short path is not used."""
    real = uvicorn_compat._source

    def source(cls: type[Any]) -> str:
        extra = (
            "\n        self.cycle.waiting_for_trailers = True" if cls is HttpToolsProtocol else ""
        )
        return real(cls) + extra

    monkeypatch.setattr(uvicorn_compat, "_source", source)
    compatibility = uvicorn_compat.check()
    assert compatibility.short_path_missing == (
        "HttpToolsProtocol's use of cycle.waiting_for_trailers",
    )
    assert compatibility.protocol is GuardedHttpProtocol


def test_without_what_the_guard_needs_uvicorn_serves_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(HttpToolsProtocol, "data_received")
    compatibility = uvicorn_compat.check()
    assert compatibility.guard_missing == ("HttpToolsProtocol.data_received()",)
    assert compatibility.protocol == "httptools"
    assert compatibility.warning is not None
    assert "serving with uvicorn's own protocol" in compatibility.warning
    assert "not guarded" in compatibility.warning


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        pytest.param("SHORT_PROTOCOL_ATTRIBUTES", GuardedHttpProtocol, id="short-path"),
        pytest.param("GUARD_PROTOCOL_ATTRIBUTES", "httptools", id="guard"),
    ],
)
def test_serve_falls_back_with_one_warning_and_the_same_answers(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    make_sqlite_settings: Callable[..., Settings],
    requirement: str,
    expected: object,
) -> None:
    needed = getattr(uvicorn_compat, requirement)
    monkeypatch.setattr(uvicorn_compat, requirement, (*needed, "moved_in_a_later_uvicorn"))
    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.update(kwargs))
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("SIGNBACK_"):
            monkeypatch.delenv(name)
    environment = {
        "SIGNBACK_ADMIN_TOKEN": ADMIN_TOKEN,
        "SIGNBACK_SECRET_KEY": SECRET_KEY,
        "SIGNBACK_LOG_FORMAT": "json",
    }
    result = CliRunner().invoke(cli.main, ["serve", "--port", "8123"], env=environment)
    assert result.exit_code == 0, result.output
    assert served["http"] == expected
    lines = [line for line in result.stderr.splitlines() if "moved_in_a_later_uvicorn" in line]
    assert len(lines) == 1, result.stderr
    assert '"level":"warning"' in lines[0]

    # Served with that protocol, a callback and a health check get their usual answers.
    with running_receiver(make_sqlite_settings, http=served["http"]) as r:
        registered = r.register(
            provider="okdokument", signatureRequestId="sr-1", documentId="doc-1"
        )
        url = registered["callback_urls"]["sendinfo_url"]
        body = {"signatureRequestId": "sr-1", "state": "signed", "id": "doc-1"}
        with httpx.Client(timeout=10) as client:
            first = client.post(url, json=body)
            again = client.post(url, json=body)
            wrong = client.post(url, content=b"{bad", headers={"content-type": "application/json"})
            health = client.get(r.url + "/healthz")
    assert (first.status_code, first.json()) == (200, {"status": "accepted"})
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert wrong.status_code == 400
    assert health.status_code == 200
