"""Argument types the commands share: what the admin API refuses, the CLI refuses too, with
click's one-line usage error instead of a database's traceback."""

from __future__ import annotations

import click

from receiver.store.storable import INT64_MAX

# A row id: a positive 64-bit integer (SQLite raised OverflowError on a larger one).
ROW_ID = click.IntRange(1, INT64_MAX)
# A TCP port to listen on.
PORT = click.IntRange(1, 65535)
# Web processes.
WORKERS = click.IntRange(1, 1024)
