"""Reconciliation: ask the providers for the real state of open requests, so that no
outcome is missed when a callback is lost (docs/reconcile.md).

- ``schedule.py``: the per-request backoff (pure);
- ``operation.py``: the outbox action ``<provider>.reconcile`` around a provider's read, whose
  finding goes to the inbox on channel ``reconcile`` and down the callbacks' road;
- ``scheduler.py``: the worker's loop (due reads in bounded batches, everything due after a
  downtime, the heartbeat), and ``read_soon`` for the providers' operations;
- ``stale.py``: gap detection (``signature_request.stale``, the API's ``?stale=true``);
- ``manual.py``: ``signback reconcile``.
"""
