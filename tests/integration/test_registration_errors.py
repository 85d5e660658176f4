"""A registration with several problems gets them all in one answer, from the API and from
`signback requests add`, instead of one per try."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from receiver import cli
from receiver.settings import Settings
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.harness import running_receiver

BAD_DEFAULTS = {"expiration_hours": "soon", "colour": "red", "name": "fine"}


def test_the_api_lists_every_problem_at_once(make_sqlite_settings: Callable[..., Settings]) -> None:
    with running_receiver(make_sqlite_settings) as r, r.admin() as admin:
        answer = admin.post(
            "/api/requests",
            json={"provider": "firma", "return_url": "not a url", "defaults": BAD_DEFAULTS},
        )
        unknown = admin.post(
            "/api/requests", json={"provider": "docusign", "signatureRequestId": ""}
        )
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid request"
    assert sorted(f["field"] for f in answer.json()["fields"]) == [
        "defaults.colour",
        "defaults.expiration_hours",
        "return_url",
        "signature_request_id",
    ]
    assert unknown.status_code == 422
    assert sorted(f["field"] for f in unknown.json()["fields"]) == [
        "provider",
        "signatureRequestId",  # as the body spelled it
    ]


def test_the_cli_lists_every_problem_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("SIGNBACK_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    result = CliRunner().invoke(
        cli.main,
        [
            "requests",
            "add",
            "--provider",
            "firma",
            "--id",
            "",
            "--return-url",
            "not a url",
            "--metadata",
            "[1]",
            "--defaults",
            '{"expiration_hours": "soon", "colour": "red"}',
        ],
        env={
            "SIGNBACK_ADMIN_TOKEN": ADMIN_TOKEN,
            "SIGNBACK_SECRET_KEY": SECRET_KEY,
            "SIGNBACK_DATABASE_URL": f"sqlite:///{tmp_path / 'signback.db'}",
            "SIGNBACK_LOG_LEVEL": "WARNING",
        },
        prog_name="signback",
    )
    assert result.exit_code == 2
    for problem in (
        "--metadata: must be a JSON object",
        "signature_request_id: ",
        "return_url: ",
        "defaults.expiration_hours: ",
        "defaults.colour: ",
    ):
        assert problem in result.stderr
