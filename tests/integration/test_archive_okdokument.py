"""OKdokument's signed PDF into the archive, over real HTTP (SQLite and PostgreSQL): only
once OKdokument's API confirmed the sendInfo claim, and, with
SIGNBACK_OKDOKUMENT_DELETE_AFTER_ARCHIVE, deleted at OKdokument only after the archived file
read back intact."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from handlers.okdokument.documents import delete_document
from handlers.okdokument.fake import FakeOkdokument
from receiver.app import build_context, prepare_database
from receiver.archive.pdf import make_pdf
from receiver.outbox.outcomes import Done, Outcome, Skipped
from receiver.settings import Settings
from receiver.store import requests
from tests.harness import Receiver, running_okdokument, running_receiver, wait_until


@pytest.fixture
def okd() -> Iterator[tuple[str, FakeOkdokument]]:
    with running_okdokument() as pair:
        yield pair


def documents(receiver: Receiver, request_id: int) -> list[dict[str, Any]]:
    with receiver.admin() as admin:
        answer = admin.get(f"/api/requests/{request_id}/documents")
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def signed_round(receiver: Receiver, okd: tuple[str, FakeOkdokument], n: int) -> tuple[int, bytes]:
    url, fake = okd
    original = make_pdf([f"Contract {n}"])
    doc = fake.new_document("contract.pdf", original, document_id=f"doc-{n}")
    fake.new_round(doc, signature_request_id=f"sr-{n}", send_info_url=None, result_url=None)
    registered = receiver.register(
        provider="okdokument", signatureRequestId=f"sr-{n}", documentId=f"doc-{n}"
    )
    wait_until(
        lambda: any(c.method == "PATCH" and c.status == 200 for c in fake.calls),
        what="the attach PATCH",
    )
    answer = httpx.post(f"{url}/_fake/sign/sr-{n}", json={}, timeout=10)
    assert answer.status_code == 200, answer.text
    signed_pdf = fake.documents[f"doc-{n}"].content
    return int(registered["id"]), signed_pdf


@pytest.mark.parametrize("delete_after", [False, True])
def test_signed_document_archived_then_optionally_deleted(
    make_settings: Callable[..., Settings],
    okd: tuple[str, FakeOkdokument],
    tmp_path: Path,
    delete_after: bool,
) -> None:
    with running_receiver(
        make_settings,
        okdokument_base_url=okd[0],
        archive_enabled=True,
        archive_dir=str(tmp_path / "archive"),
        okdokument_delete_after_archive=delete_after,
    ) as receiver:
        request_id, signed_pdf = signed_round(receiver, okd, 1)
        assert signed_pdf.startswith(b"%PDF-")
        assert b"in round sr-1" in signed_pdf  # the round's signature, appended
        items = wait_until(lambda: documents(receiver, request_id), what="the archived PDF")
        assert [(d["name"], d["kind"]) for d in items] == [("signed.pdf", "signed")]
        assert items[0]["sha256"] == hashlib.sha256(signed_pdf).hexdigest()
        assert items[0]["size"] == len(signed_pdf)
        shown = receiver.wait_for_state(request_id, "completed")
        # Archived only after the confirmation, never on the unsigned claim alone.
        timeline = [(e["channel"], e["state_after"]) for e in shown["timeline"]]
        assert ("confirmation", "completed") in timeline
        _, fake = okd
        if delete_after:
            receiver.wait_for_actions(request_id, settled=4)
            actions = {a["operation"]: a for a in receiver.show(request_id)["actions"]}
            assert actions["okdokument.delete_document"]["status"] == "done"
            assert "doc-1" not in fake.documents
            deletes = [c for c in fake.calls if c.method == "DELETE"]
            assert [(c.path, c.status) for c in deletes] == [("/JSON/document/doc-1", 200)]
        else:
            receiver.wait_for_actions(request_id, settled=3)
            operations = [a["operation"] for a in receiver.show(request_id)["actions"]]
            assert "okdokument.delete_document" not in operations
            assert "doc-1" in fake.documents
            assert not [c for c in fake.calls if c.method == "DELETE"]


def test_no_delete_unless_the_archive_reads_back_intact(
    make_settings: Callable[..., Settings], okd: tuple[str, FakeOkdokument], tmp_path: Path
) -> None:
    """The delete operation reads the archived file back first: altered in the storage, the
    delete is skipped and OKdokument keeps its copy; intact, the document is deleted."""
    _, fake = okd
    with running_receiver(
        make_settings,
        okdokument_base_url=okd[0],
        archive_enabled=True,
        archive_dir=str(tmp_path / "archive"),
    ) as receiver:
        request_id, signed_pdf = signed_round(receiver, okd, 2)
        wait_until(lambda: documents(receiver, request_id), what="the archived PDF")
        settings = receiver.settings
    (stored,) = (tmp_path / "archive" / "okdokument" / str(request_id)).iterdir()

    async def delete() -> Outcome:
        ctx = build_context(settings)
        await prepare_database(ctx)
        await ctx.start_providers()
        try:
            row = await requests.get(ctx.db, request_id)
            assert row is not None
            return await delete_document(ctx, requests.from_row(row), {})
        finally:
            await ctx.close()
            await ctx.db.close()

    stored.write_bytes(b"%PDF-1.4 altered")
    refused = asyncio.run(delete())
    assert isinstance(refused, Skipped)
    assert "does not match its recorded size and SHA-256" in refused.message
    assert "doc-2" in fake.documents
    assert not [c for c in fake.calls if c.method == "DELETE"]

    stored.unlink()
    missing = asyncio.run(delete())
    assert isinstance(missing, Skipped)
    assert "missing from the storage" in missing.message

    stored.write_bytes(signed_pdf)
    done = asyncio.run(delete())
    assert isinstance(done, Done)
    assert "doc-2" not in fake.documents
