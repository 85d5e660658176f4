"""``signback endpoints …`` against the database directly, with the API's rules."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result

from receiver.cli import main
from tests.conftest import ADMIN_TOKEN, SECRET_KEY


def run(database_url: str, *args: str, allow_private: bool = True) -> Result:
    env = {
        "SIGNBACK_DATABASE_URL": database_url,
        "SIGNBACK_ADMIN_TOKEN": ADMIN_TOKEN,
        "SIGNBACK_SECRET_KEY": SECRET_KEY,
        "SIGNBACK_ENDPOINT_ALLOW_PRIVATE": "true" if allow_private else "false",
        "SIGNBACK_LOG_LEVEL": "WARNING",
    }
    return CliRunner().invoke(main, ["endpoints", *args], env=env, catch_exceptions=False)


def answer(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_endpoints_commands(database_url: str) -> None:
    refused = run(database_url, "add", "--url", "http://127.0.0.1:9/x", allow_private=False)
    assert refused.exit_code == 2
    assert "url: 127.0.0.1 is a loopback address" in refused.output
    invalid = run(database_url, "add", "--url", "http://127.0.0.1:9/x", "--kind", "nope")
    assert invalid.exit_code == 2
    assert "kinds: unknown event type(s) nope" in invalid.output

    created = answer(
        run(
            database_url,
            "add",
            "--url",
            "http://127.0.0.1:9/x",
            "--description",
            "crm",
            "--kind",
            "signature_request.completed",
            "--provider",
            "firma",
        )
    )
    assert created["secret"].startswith("whsec_")
    endpoint_id = str(created["id"])
    listed = answer(run(database_url, "list"))
    assert [e["description"] for e in listed] == ["crm"]
    assert "secret" not in listed[0]
    shown = answer(run(database_url, "show", endpoint_id))
    assert shown["kinds"] == ["signature_request.completed"]
    updated = answer(run(database_url, "update", endpoint_id, "--all-kinds", "--include-raw"))
    assert (updated["kinds"], updated["include_raw"]) == ([], True)
    assert answer(run(database_url, "disable", endpoint_id))["status"] == "disabled"
    assert run(database_url, "test", endpoint_id).exit_code == 2  # enable it first
    assert answer(run(database_url, "enable", endpoint_id))["status"] == "enabled"
    rotated = answer(run(database_url, "rotate-secret", endpoint_id))
    assert rotated["secret"] != created["secret"]
    tested = answer(run(database_url, "test", endpoint_id))
    assert tested["type"] == "signback.test"
    pending = answer(run(database_url, "deliveries", endpoint_id, "--status", "pending"))
    assert [d["event"]["type"] for d in pending] == ["signback.test"]
    assert pending[0]["webhook_id"].endswith(f"_{endpoint_id}")
    replayed = answer(run(database_url, "replay", endpoint_id, "--since", "2020-01-01T00:00:00Z"))
    assert replayed == {"queued": 0, "events": 1, "truncated": False}  # a test is for it alone
    bad = run(database_url, "replay", endpoint_id, "--since", "soon")
    assert bad.exit_code == 2
    assert "since" in bad.output
    retried = run(database_url, "retry-dead", endpoint_id)
    assert retried.stdout.strip() == "0 dead deliveries re-queued"
    deleted = run(database_url, "delete", endpoint_id)
    assert deleted.stdout.strip() == f"endpoint {endpoint_id} deleted"
    for command in ("show", "delete", "test", "rotate-secret", "retry-dead", "deliveries"):
        missing = run(database_url, command, endpoint_id)
        assert missing.exit_code == 2, command  # an unknown id is a usage problem
        assert f"no endpoint with id {endpoint_id}" in missing.output


def test_a_replay_of_an_unknown_request_is_refused(database_url: str) -> None:
    created = answer(run(database_url, "add", "--url", "http://127.0.0.1:9/x"))
    refused = run(database_url, "replay", str(created["id"]), "--request-id", "999")
    assert refused.exit_code == 2
    assert "request_id: no request with id 999" in refused.output
