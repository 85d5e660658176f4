"""Access-log paths never carry a callback token (receiver/intake/middleware.py loggable_path)."""

from __future__ import annotations

import pytest

from receiver.intake.middleware import loggable_path
from receiver.intake.tokens import return_token_for

TOKEN = return_token_for("k" * 32, "0123456789abcdef0123456789abcdef")


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
    ],
)
def test_other_paths_are_untouched(path: str) -> None:
    assert loggable_path(path) == path
