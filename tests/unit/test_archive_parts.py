"""The archive's pure and local parts: the generated PDF, the spool (bounded, hashed,
checked, nothing left behind when cut short), the local storage's atomic put, signed links,
the download-host check and when the pipeline queues the archive action."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.archive import ARCHIVE_OPERATION, links
from receiver.archive.pdf import make_pdf
from receiver.archive.spool import PDF, NotAcceptable, spool, sweep
from receiver.archive.storage import LocalStorage, default_dir, object_key
from receiver.events import EventKind, NormalizedEvent
from receiver.model import RequestState, SignatureRequest
from receiver.outbox.provider_http import host_allowed
from receiver.pipeline.states import Transition
from receiver.providers import DocumentRef
from tests.conftest import test_settings

pytestmark = pytest.mark.anyio


async def chunks_of(
    data: bytes, size: int, *, fail_after: int | None = None
) -> AsyncIterator[bytes]:
    for index, start in enumerate(range(0, len(data), size)):
        if fail_after is not None and index == fail_after:
            raise ConnectionResetError("the provider hung up")
        yield data[start : start + size]


def test_generated_pdf_is_well_formed() -> None:
    pdf = make_pdf(["Signed by Alice (alice@example.com)", "a (parenthesis) and \\"], padding=5000)
    assert pdf.startswith(b"%PDF-1.4\n")
    assert pdf.endswith(b"%%EOF\n")
    assert len(pdf) > 5000
    # Every xref entry points at its object, and startxref at the table.
    startxref = int(re.search(rb"startxref\n(\d+)\n", pdf).group(1))  # type: ignore[union-attr]
    assert pdf[startxref:].startswith(b"xref\n")
    offsets = [int(m) for m in re.findall(rb"(\d{10}) 00000 n", pdf)]
    for number, offset in enumerate(offsets, start=1):
        assert pdf[offset:].startswith(b"%d 0 obj" % number)
    assert b"(a \\(parenthesis\\) and \\\\)" in pdf


async def test_spool_hashes_and_measures_a_stream(tmp_path: Path) -> None:
    data = make_pdf(["x"], padding=300_000)
    spooled = await spool(chunks_of(data, 7_000), tmp_path, media_type=PDF, max_bytes=10**6)
    assert spooled.size == len(data)
    assert spooled.sha256 == hashlib.sha256(data).hexdigest()
    assert spooled.path.read_bytes() == data
    assert spooled.path.parent == tmp_path


async def test_spool_yields_to_the_governor_after_every_chunk(tmp_path: Path) -> None:
    """A large download is many steps of reading and hashing on the event loop: each one
    asks the pace (the governor's turn in the worker) before the next, so a flood of
    callbacks can hold the archive back between chunks, not only between files."""
    data = make_pdf(["x"], padding=300_000)
    received: list[int] = []
    turns: list[int] = []

    async def counted() -> AsyncIterator[bytes]:
        async for chunk in chunks_of(data, 65_536):
            received.append(len(chunk))
            yield chunk

    async def pace() -> None:
        turns.append(len(received))

    await spool(counted(), tmp_path, media_type=PDF, max_bytes=10**6, pace=pace)
    assert len(received) == -(-len(data) // 65_536)
    # One turn after each chunk, before the next one is read.
    assert turns == list(range(1, len(received) + 1))


@pytest.mark.parametrize(
    ("data", "media_type", "max_bytes", "problem", "may_pass"),
    [
        (b"<html>error</html>" * 10, PDF, 10**6, "not a PDF", True),
        (b"%PD", PDF, 10**6, "not a PDF", True),
        (b"%PDF-" + b"x" * 5000, PDF, 4096, "larger than", False),
        (b"{}" * 3000, "application/json", 4096, "larger than", False),
    ],
)
async def test_spool_refuses_and_leaves_nothing(
    tmp_path: Path, data: bytes, media_type: str, max_bytes: int, problem: str, may_pass: bool
) -> None:
    with pytest.raises(NotAcceptable, match=problem) as refused:
        await spool(chunks_of(data, 1000), tmp_path, media_type=media_type, max_bytes=max_bytes)
    assert refused.value.may_pass is may_pass
    assert os.listdir(tmp_path) == []


async def test_a_download_cut_short_leaves_no_file(tmp_path: Path) -> None:
    data = make_pdf(["x"], padding=100_000)
    with pytest.raises(ConnectionResetError):
        await spool(
            chunks_of(data, 10_000, fail_after=3), tmp_path, media_type=PDF, max_bytes=10**6
        )
    assert os.listdir(tmp_path) == []


async def test_local_storage_puts_atomically_and_reads_back(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "archive")
    data = make_pdf(["x"], padding=200_000)
    spooled = await spool(chunks_of(data, 8192), storage.spool_dir, media_type=PDF, max_bytes=10**6)
    key = object_key("firma", 7, spooled.sha256, "signed.pdf")
    await storage.put(spooled, key, media_type=PDF)
    assert not spooled.path.exists()  # renamed, not copied
    assert list(storage.spool_dir.iterdir()) == []
    assert storage.path_of(key).read_bytes() == data
    assert b"".join([c async for c in storage.read(key)]) == data
    await storage.delete(key)
    await storage.delete(key)  # absent already: fine
    with pytest.raises(FileNotFoundError):
        [c async for c in storage.read(key)]
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b"):
        with pytest.raises(ValueError, match="not an archive key"):
            storage.path_of(bad)


def test_sweep_removes_only_old_partial_files(tmp_path: Path) -> None:
    old = tmp_path / "1-old.partial"
    new = tmp_path / "2-new.partial"
    other = tmp_path / "keep.pdf"
    for path in (old, new, other):
        path.write_bytes(b"x")
    now = new.stat().st_mtime
    os.utime(old, (now - 7 * 3600, now - 7 * 3600))
    assert sweep(tmp_path, now=now) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2-new.partial", "keep.pdf"]


def test_default_archive_dir_is_next_to_the_sqlite_file(tmp_path: Path) -> None:
    settings = test_settings(f"sqlite:///{tmp_path}/data/signback.db")
    assert default_dir(settings) == (tmp_path / "data" / "archive").resolve()
    postgres = test_settings("postgresql://localhost/x")
    assert default_dir(postgres) == Path("archive").resolve()


def test_signed_links() -> None:
    settings = test_settings("sqlite:///x.db")
    key = links.link_key(settings)
    # Derived from the secret key, but not the secret key itself.
    assert key != settings.secret_key.get_secret_value().encode()
    sig = links.signature(key, 5, "signed.pdf", 2_000_000_000)
    assert links.check(key, 5, "signed.pdf", "2000000000", sig, now=1_900_000_000) is None
    expired = links.check(key, 5, "signed.pdf", "2000000000", sig, now=2_000_000_001)
    assert expired is not None
    assert expired.status == 410
    for request_id, name, expires, signature in [
        (6, "signed.pdf", "2000000000", sig),  # another request
        (5, "audit-trail.json", "2000000000", sig),  # another file
        (5, "signed.pdf", "2000000001", sig),  # a longer life
        (5, "signed.pdf", "2000000000", sig[:-1] + "0"),
        (5, "signed.pdf", "2000000000", "é"),
        (5, "signed.pdf", "-1", sig),
        (5, "signed.pdf", "9" * 40, sig),
        (5, "signed.pdf", None, sig),
        (5, "signed.pdf", "2000000000", None),
    ]:
        refusal = links.check(key, request_id, name, expires, signature, now=1_900_000_000)
        assert refusal is not None, (request_id, name, expires)
        assert refusal.status == 403, (request_id, name, expires)
    own = test_settings("sqlite:///x.db", archive_link_secret="l" * 32)
    assert links.link_key(own) == b"l" * 32
    url, expires_at = links.link_url(own, 5, "signed.pdf", now=1_000)
    assert url.startswith("http://signback.test/archive/5/signed.pdf?expires=4600&sig=")
    assert expires_at == 4600


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://files.firma.dev/x?sig=1", True),
        ("https://firma.dev.evil.com/x", False),
        ("https://abc.supabase.co/storage/v1/object/sign/x", True),
        ("ftp://files.firma.dev/x", False),
        ("https://api.example/x", True),
        ("https://API.EXAMPLE/x", True),
        ("http:///x", False),
    ],
)
def test_download_hosts(url: str, allowed: bool) -> None:
    assert host_allowed(url, ["*.firma.dev", "*.supabase.co", "api.example"]) is allowed


def test_document_names_are_safe() -> None:
    DocumentRef("signed.pdf", "signed")
    for bad in ("../x", "a/b", "Signed.pdf", "", ".hidden", "a..b"):
        with pytest.raises(ValueError, match="document name"):
            DocumentRef(bad, "signed")


def _event(confirmed: bool) -> NormalizedEvent:
    return NormalizedEvent(
        provider="firma",
        kind=EventKind.REQUEST_COMPLETED,
        provider_type="signing_request.completed",
        external_id="sr-1",
        confirmed=confirmed,
    )


@pytest.mark.parametrize(
    ("confirmed", "before", "after", "enabled", "queued"),
    [
        (True, RequestState.SENT, RequestState.COMPLETED, True, True),
        (False, RequestState.SENT, RequestState.COMPLETED, True, False),  # a claim
        (True, RequestState.COMPLETED, RequestState.COMPLETED, True, False),  # a repeat
        (True, RequestState.SENT, RequestState.CANCELLED, True, False),
        (True, RequestState.SENT, RequestState.COMPLETED, False, False),  # switched off
    ],
)
def test_when_the_archive_action_is_queued(
    confirmed: bool, before: RequestState, after: RequestState, enabled: bool, queued: bool
) -> None:
    from receiver.app import build_context
    from receiver.archive.trigger import archive_actions

    ctx = build_context(test_settings("sqlite:///x.db", archive_enabled=enabled))
    request = SignatureRequest(id=1, provider="firma", external_id="sr-1", state=after)
    actions = archive_actions(ctx, _event(confirmed), request, Transition(before, after, ""))
    assert [a.operation for a in actions] == ([ARCHIVE_OPERATION] if queued else [])
    assert all(a.key == "archive" for a in actions)
