"""Firma's rate budgets: what signback may call per API key, shared by every process.

Firma allows 200 reads (GET) and 120 writes (POST/PUT/PATCH/DELETE) a minute per API key,
and answers 429 beyond that. signback keeps below both with its own budgets
(``SIGNBACK_FIRMA_READS_PER_MINUTE``, default 150; ``SIGNBACK_FIRMA_WRITES_PER_MINUTE``,
default 100), kept in the database (:mod:`receiver.outbox.budgets`), so that every worker process
together stays within them.

Every call to Firma's API takes a slot first, whoever makes it::

    deferral = await take_slot(ctx.db, budgets.reads(ctx), clock=ctx.clock)
    if deferral is not None:
        ...  # nothing was reserved: come back after deferral.seconds

The outbox's PATCH does so today; a reconciler that reads open requests, or an archiver that
downloads documents, would take read slots the same way and share the budget with it.
"""

from __future__ import annotations

import hashlib

from handlers.firma.settings import FirmaSettings
from receiver.context import AppContext
from receiver.outbox.budgets import Budget


def key_digest(settings: FirmaSettings) -> str:
    """Budgets are per API key, named by a hash of it: the key itself is never stored."""
    key = settings.api_key
    return hashlib.sha256(key.get_secret_value().encode() if key else b"").hexdigest()[:16]


def reads(ctx: AppContext) -> Budget:
    settings = ctx.settings.section(FirmaSettings)
    return Budget(
        f"firma-reads:{key_digest(settings)}",
        settings.reads_per_minute,
        window=ctx.rate_window_seconds,
    )


def writes(ctx: AppContext) -> Budget:
    settings = ctx.settings.section(FirmaSettings)
    return Budget(
        f"firma-writes:{key_digest(settings)}",
        settings.writes_per_minute,
        window=ctx.rate_window_seconds,
    )
