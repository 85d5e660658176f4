"""Which HTTP path a provider client takes (receiver/outbox/provider_http.py).

The lean client serves calls unless an httpx transport is handed in (tests) or the
environment routes the provider's host through a proxy, which only httpx speaks to.
"""

from __future__ import annotations

import httpx
import pytest

from receiver.outbox.provider_http import ProviderHttpClient, proxied

BASE = "https://api.provider.example/v1"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, False, id="no-proxy"),
        pytest.param({"HTTPS_PROXY": "http://proxy:3128"}, True, id="https-proxy"),
        pytest.param({"ALL_PROXY": "http://proxy:3128"}, True, id="all-proxy"),
        pytest.param({"HTTP_PROXY": "http://proxy:3128"}, False, id="http-proxy-only"),
        pytest.param(
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "provider.example"},
            False,
            id="no-proxy-covers-host",
        ),
    ],
)
def test_proxy_settings_choose_httpx(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: bool
) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxied(BASE) is expected
    client = ProviderHttpClient(BASE, {"x-api-key": "k"}, timeout=5, transport=None)
    assert (client._lean is None) is expected


def test_a_given_transport_is_used() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    client = ProviderHttpClient(BASE, {}, timeout=5, transport=transport)
    assert client._lean is None
