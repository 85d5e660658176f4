"""Outbound calls to the OKdokument API.

Deliberately thin: one method per endpoint, one HTTP request per call, no retries and no
status interpretation. The core's outbox owns retrying (it decides from the status code and
the transport error), so this client returns every answer (an
:class:`~receiver.outbox.provider_http.HttpAnswer`) as is and lets transport errors (connect
errors, timeouts) propagate as ``httpx`` exceptions.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from receiver.outbox.provider_http import HttpAnswer, ProviderHttpClient

__all__ = ["OkdokumentClient", "provider_message"]


# How much of a non-JSON error body reaches the operator.
_MAX_BODY_CHARS = 300


def _segment(value: str) -> str:
    """Quote one path segment so that it cannot leave the endpoint it is meant for.

    ``quote(value, safe="")`` escapes ``/``, ``?``, ``#`` and ``%``, but leaves dots alone,
    and RFC 3986 clients, proxies and servers remove ``.`` and ``..`` segments from a URL:
    an id of ``..`` would turn ``/JSON/document/metadata/..`` into ``/JSON/document``.
    Dot-only segments are therefore percent-encoded as well.
    """
    if not value:
        # An empty id would address the collection (``/JSON/signatureRequest/``) instead.
        raise ValueError("an OKdokument id must not be empty")
    quoted = quote(value, safe="")
    if value.strip(".") == "":
        quoted = value.replace(".", "%2E")
    return quoted


class OkdokumentClient(ProviderHttpClient):
    """The OKdokument API, authenticated with an ``x-api-key`` header.

    ``base_url`` is e.g. ``https://apidev.okdokument.com`` and may carry a path prefix (a
    reverse proxy, the emulator mounted somewhere); every call stays under it. Redirects are
    not followed: the API does not redirect, and following one would send the key elsewhere.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
    ) -> None:
        if not api_key:
            raise ValueError("an OKdokument API key is required (it comes with the subscription)")
        super().__init__(base_url, {"x-api-key": api_key}, timeout=timeout)

    async def patch_signature_request(
        self,
        signature_request_id: str,
        *,
        send_info_url: str | None = None,
        result_url: str | None = None,
    ) -> HttpAnswer:
        """``PATCH /JSON/signatureRequest``: change where a round reports back to.

        Only the given fields are sent. The docs' field table spells ``sendInfoUrl`` while
        their example sends ``sendInfoURL``; the example is what the API is known to accept.
        """
        if send_info_url is None and result_url is None:
            raise ValueError("nothing to update: give send_info_url and/or result_url")
        body: dict[str, str] = {"signatureRequestId": signature_request_id}
        if send_info_url is not None:
            body["sendInfoURL"] = send_info_url
        if result_url is not None:
            body["resulturl"] = result_url
        return await self._request("PATCH", "/JSON/signatureRequest", json=body)

    async def create_signature_request(self, body: Mapping[str, Any]) -> HttpAnswer:
        """``POST /JSON/signatureRequest``: a new document, or a new round on one.

        The body is passed through untouched (``filedata`` or ``id`` + ``changeState``,
        ``sendInfoURL``, ``resulturl``, ...); the new id comes back in ``result``.
        """
        return await self._request("POST", "/JSON/signatureRequest", json=dict(body))

    async def document_metadata(self, document_id: str) -> HttpAnswer:
        """``GET /JSON/document/metadata/{documentId}``: the document's current state."""
        return await self._request("GET", f"/JSON/document/metadata/{_segment(document_id)}")

    @contextlib.asynccontextmanager
    async def stream_document(self, document_id: str) -> AsyncIterator[httpx.Response]:
        """``GET /JSON/document/{documentId}``, streamed: the document's PDF bytes."""
        async with self._stream(f"/JSON/document/{_segment(document_id)}") as answer:
            yield answer

    async def delete_document(self, document_id: str) -> HttpAnswer:
        """``DELETE /JSON/document/{documentId}``: the wiki's "Delete document" (its page
        could not be read; the path follows Download document's, see docs/archive.md)."""
        return await self._request("DELETE", f"/JSON/document/{_segment(document_id)}")

    async def delete_signature_request(self, signature_request_id: str) -> HttpAnswer:
        """``DELETE /JSON/signatureRequest/{signatureRequestId}``."""
        return await self._request(
            "DELETE", f"/JSON/signatureRequest/{_segment(signature_request_id)}"
        )


def provider_message(response: HttpAnswer) -> str:
    """The provider's own words about a response, for the operator.

    OKdokument errors are JSON ``{"message": ..., "value": ...}`` where ``value`` names the
    offending id or field; anything else (a proxy's HTML page, an empty body) is reduced to
    the start of the body or, failing that, the reason phrase.
    """
    text = response.text.strip()
    try:
        data: Any = json.loads(text) if text else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        message = data.get("message")
        if isinstance(message, str) and message:
            value = data.get("value")
            if value is not None and value != "":
                return f"{message} ({value})"
            return message
    if text:
        return text[:_MAX_BODY_CHARS]
    return response.reason_phrase or f"HTTP {response.status_code}"
