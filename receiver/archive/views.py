"""How an archived file is shown: in the API, the CLI and the downstream event."""

from __future__ import annotations

from typing import Any

from receiver.archive import links
from receiver.outbox.downstream.events import iso
from receiver.settings import Settings
from receiver.store.documents import Document


def document_json(settings: Settings, document: Document, *, now: float) -> dict[str, Any]:
    """Name, kind, size, SHA-256, when archived, and a fresh signed download link (none once
    retention purged the file: ``purged_at`` says when)."""
    view: dict[str, Any] = {
        "name": document.name,
        "kind": document.kind,
        "media_type": document.media_type,
        "size": document.size,
        "sha256": document.sha256,
        "archived_at": iso(document.archived_at),
    }
    if document.purged_at is None:
        url, expires = links.link_url(settings, document.request_id, document.name, now=now)
        view["download_url"], view["download_expires_at"] = url, iso(expires)
    else:
        view["purged_at"] = iso(document.purged_at)
    return view
