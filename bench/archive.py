"""The archive scenario: archiving signed PDFs does not slow the intake.

The OKdokument intake (wrk, ``signback serve`` on SQLite with its worker, as in the intake
scenario) three times, each on a fresh store: without anything to archive, while the worker
archives a backlog of completed requests (each one's signed PDF, 256 KiB, streamed from the
OKdokument emulator, hashed, synced and renamed into the archive directory, then recorded
with its event), and without again. The archiving run is compared with the mean of the two
around it: the intake's requests/s and p99, and the files archived during the load.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing
from typing import TYPE_CHECKING

import httpx

from bench.report import Row, check, fmt_int, fmt_ms
from receiver.archive import ARCHIVE_KEY, ARCHIVE_OPERATION

if TYPE_CHECKING:
    from bench.scenarios import Bench, IntakeRun
    from bench.stores import Target

PDF_BYTES = 256 * 1024  # the emulator keeps every document in memory: 2,000 of these
OKD = "okdokument"


def backlog_size(quick: bool) -> int:
    # Enough that the worker is still archiving when the load ends (the row "files
    # archived during the load" says whether it was).
    return 150 if quick else 2_000


def queue_archive(db_url: str, targets: Sequence[Target]) -> None:
    """Mark the requests completed and queue their archive actions, as the pipeline does on
    a confirmed completion."""
    now = time.time()
    path = db_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "UPDATE signature_requests SET state = 'completed' WHERE id = ?",
            [(t.request_id,) for t in targets],
        )
        conn.executemany(
            "INSERT INTO outbox (request_id, lane, action_key, operation, payload, status,"
            " due_at, attempts, created_at, updated_at) VALUES (?, 'provider', ?, ?, '{}',"
            " 'pending', ?, 0, ?, ?)",
            [(t.request_id, ARCHIVE_KEY, ARCHIVE_OPERATION, now, now, now) for t in targets],
        )


def archived(db_url: str) -> int:
    path = db_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0])


def seed_documents(fake_url: str, targets: Sequence[Target]) -> None:
    """The emulator's documents for the backlog: 256 KiB generated PDFs."""
    with httpx.Client(base_url=fake_url, timeout=30) as client:
        for target in targets:
            client.post(
                "/_fake/signature-requests",
                json={
                    "signatureRequestId": target.external_id,
                    "documentId": target.document_id,
                    "padding": PDF_BYTES,
                },
            ).raise_for_status()


def scenario(bench: Bench) -> None:
    quick = bench.sizes.intake_s < 10
    backlog = backlog_size(quick)
    seconds = bench.sizes.intake_s
    runs: dict[str, tuple[IntakeRun, int]] = {}
    for name, archiving in (("idle", False), ("archiving", True), ("idle again", False)):
        slug = name.replace(" ", "-")
        url = bench.fresh_sqlite(f"archive-{slug}")
        targets = bench.register(url, OKD, bench.sizes.requests + backlog)
        intake, completed = targets[: bench.sizes.requests], targets[bench.sizes.requests :]
        fake = bench.start_fake(intake)
        try:
            if archiving:
                seed_documents(fake, completed)
                queue_archive(url, completed)
            server = bench.start_signback(
                f"signback-archive-{slug}",
                url,
                fake_url=fake,
                extra_env={
                    "SIGNBACK_ARCHIVE_ENABLED": "true",
                    "SIGNBACK_ARCHIVE_DIR": str(bench.run_dir / f"archive-{slug}"),
                },
            )
            bench.say(f"archive: OKdokument intake, {name}")
            before = archived(url)
            run = bench.intake_once(
                server,
                OKD,
                bench.okd_data(intake, "tosign"),
                seconds,
                label=f"Archive · intake while {name}",
            )
            runs[name] = (run, archived(url) - before)
        finally:
            bench.stop_fakes()
    add_rows(bench, runs, backlog, seconds)


def add_rows(
    bench: Bench, runs: dict[str, tuple[IntakeRun, int]], backlog: int, seconds: float
) -> None:
    from bench.scenarios import bracketed, first_invalid

    (idle, _), (busy, files), (idle_again, _) = (
        runs["idle"],
        runs["archiving"],
        runs["idle again"],
    )
    quiet = bracketed(idle.result, idle_again.result)
    ratio = busy.result.rps / quiet.rps if quiet.rps else 0.0
    p99 = busy.result.latency_ms["p99"]
    p99_ratio = p99 / quiet.latency_ms["p99"] if quiet.latency_ms["p99"] else 0.0
    invalid = first_invalid(busy, idle, idle_again)
    scenario = "Archive (256 KiB PDFs archived meanwhile) · SQLite"
    bench.rows.append(
        Row(
            scenario,
            "intake requests/s vs nothing to archive (runs before and after)",
            fmt_int(busy.result.rps),
            f"{fmt_int(idle.result.rps)} / {fmt_int(idle_again.result.rps)}",
            f"{ratio:.2f}x",
            "within 10 %",
            check(invalid is None and ratio >= 0.90, invalid or f"({ratio - 1:+.0%})"),
        )
    )
    bench.rows.append(
        Row(
            scenario,
            "intake latency p99 vs nothing to archive",
            fmt_ms(p99),
            f"{fmt_ms(idle.result.latency_ms['p99'])} / "
            f"{fmt_ms(idle_again.result.latency_ms['p99'])}",
            f"{p99_ratio:.2f}x",
            "within 10 %",
            check(invalid is None and p99_ratio <= 1.10, invalid or f"({p99_ratio - 1:+.0%})"),
        )
    )
    bench.rows.append(
        Row(
            scenario,
            "files archived during the load",
            f"{files:,} of {backlog:,}",
            "",
            "",
            "> 0",
            check(files > 0),
        )
    )
    bench.notes.append(
        f"Archive: {files:,} signed PDFs of 256 KiB archived during the {seconds:g} s intake run "
        f"({files / seconds:,.1f}/s), each streamed from the emulator, hashed, synced and "
        "renamed into place, then recorded with its event."
    )
