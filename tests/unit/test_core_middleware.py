"""Access-log paths never carry a callback token (receiver/intake/middleware.py loggable_path),
on whatever path it comes, and uvicorn's own log lines neither (receiver/logs.py)."""

from __future__ import annotations

import logging

import pytest

from receiver.app import create_app
from receiver.intake.middleware import loggable_path, token_routes
from receiver.intake.tokens import return_token_for
from receiver.logs import RedactTokens, redact_tokens
from tests.conftest import test_settings

TOKEN = return_token_for("k" * 32, "0123456789abcdef0123456789abcdef")


@pytest.fixture(autouse=True, scope="module")
def installed_token_routes() -> None:
    """The app tells the log which hook routes carry a token (OKdokument's, here)."""
    create_app(test_settings("sqlite:///unused.db"))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(f"/hooks/okdokument/{TOKEN}", "/hooks/okdokument/[token]", id="sendinfo"),
        pytest.param(f"/return/{TOKEN}", "/return/[token]", id="return"),
        pytest.param(f"/return/{TOKEN}/", "/return/[token]/", id="trailing-slash"),
        pytest.param(f"/hooks/okdokument/{TOKEN}/x", "/hooks/okdokument/[token]/x", id="sub"),
        pytest.param("/return/not-a-real-token", "/return/[token]", id="any-shape"),
        pytest.param("/return/a", "/return/[token]", id="one-char"),
        pytest.param("/return/ab%2Fcd", "/return/[token]", id="escaped-slash"),
        pytest.param(f"//hooks/okdokument/{TOKEN}", "//hooks/okdokument/[token]", id="//hooks"),
        pytest.param(f"/hooks//okdokument/{TOKEN}", "/hooks//okdokument/[token]", id="hooks//"),
        pytest.param(f"/Hooks/okdokument/{TOKEN}", "/Hooks/okdokument/[token]", id="capital"),
        pytest.param(f"//return/{TOKEN}", "//return/[token]", id="//return"),
        pytest.param(f"/{TOKEN}", "/[token]", id="first-segment"),
        pytest.param(f"/hooks/firma/{TOKEN}", "/hooks/firma/[token]", id="firma-workspace"),
        pytest.param(f"/x/{TOKEN}.json", "/x/[token].json", id="inside-a-segment"),
        pytest.param(f"/api/x;{TOKEN}?a=1", "/api/x;[token]?a=1", id="parameter"),
        pytest.param("/a/" + "f" * 40 + "0", "/a/[token]", id="hex"),
        pytest.param("/a/9f1c2d3e-4b5a-4c6d-8e7f-0123456789ab", "/a/[token]", id="uuid"),
    ],
)
def test_tokens_are_replaced(path: str, expected: str) -> None:
    logged = loggable_path(path)
    assert logged == expected
    assert TOKEN not in logged


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/healthz",
        "/readyz",
        "/api/requests",
        "/api/requests/42",
        "/api/outbox/7/retry",
        "/hooks/firma",
        "/hooks/firma/workspace-1",
        "/hooks/okdokument",
        "/hooks/okdokument/",
        "/return",
        "/return/",
        "/returns/abc",
        "/hooks/okdokumentx/abc",
        "/api/return/abc",
        "/x/hooks/okdokument/abc",
        "",
        "/api/requests/12345678901234567890",
        "/hooks/firma/signing_request_completed_events",
        "/hooks/firma/workspace-of-acme-corp",
    ],
)
def test_other_paths_are_untouched(path: str) -> None:
    assert loggable_path(path) == path


def test_a_providers_hook_token_route_is_cut_whatever_its_token_looks_like() -> None:
    assert loggable_path("/hooks/acme/short") == "/hooks/acme/short"
    token_routes(["/hooks/acme"])  # what create_app does for a provider with such a route
    assert loggable_path("/hooks/acme/short") == "/hooks/acme/[token]"
    assert loggable_path("/hooks/acme") == "/hooks/acme"
    assert loggable_path("/hooks/acmex/short") == "/hooks/acmex/short"
    assert loggable_path("/hooks/okdokument/short") == "/hooks/okdokument/[token]"  # still


def test_uvicorns_own_log_lines_lose_their_tokens() -> None:
    """uvicorn's access line puts the path in its arguments; an error line may put it in
    the message."""
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", f"//hooks/okdokument/{TOKEN}?x=1", "1.1", 404),
        None,
    )
    error = logging.LogRecord(
        "uvicorn.error", logging.WARNING, __file__, 1, f"bad request to /x/{TOKEN}", None, None
    )
    for record in (access, error):
        assert RedactTokens().filter(record)
        assert TOKEN not in record.getMessage()
        assert "[token]" in record.getMessage()
    assert (
        access.getMessage() == '127.0.0.1:5000 - "POST //hooks/okdokument/[token]?x=1 HTTP/1.1" 404'
    )


def test_redaction_is_installed_on_uvicorns_loggers() -> None:
    from receiver.logs import configure_logging

    configure_logging("INFO", "json")
    for name in ("uvicorn.access", "uvicorn.error"):
        assert any(isinstance(f, RedactTokens) for f in logging.getLogger(name).filters)
    assert redact_tokens("no secrets here") == "no secrets here"
