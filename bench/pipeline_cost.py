"""Not a scenario: what the pipeline costs per event on PostgreSQL, in round trips and CPU,
for this tree and for another commit, measured in turns in one run.

``python -m bench.pipeline_cost --against cfb4d20 --events 3000 --rounds 3``

Round trips and CPU per event hold still on a machine whose speed moves (a shared one);
events per second do not. Each measurement is a fresh process on a fresh database: the
inbox is filled with ``--events`` callbacks for 500 registered requests (Firma
``signing_request.recipient.signed``: matched by the provider's request id, a state change
and a downstream event, no outbox action; or OKdokument ``tostamp`` with the bench's rule:
one PATCH queued per event), then the pipeline works them off alone (no HTTP, no
dispatcher). Round trips are counted at psycopg's connection (every exchange it waits for:
each statement, BEGIN, COMMIT, a pipelined batch: one per Sync), so the same count applies
to any commit.

``--endpoints N`` registers that many downstream endpoints first (each wants every
signature-request event; nothing is delivered, no dispatcher runs): each event's downstream
event then goes to them, with a delivery queued per endpoint.

``--against REF`` exports that commit (``git archive``) to a scratch directory and runs the
same measurement with its code; the rows alternate (this tree, REF, this tree, …).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
RESULT = "PIPELINE_COST "
REQUESTS = 500


def child(db_url: str, provider: str, events: int, endpoints: int = 0) -> dict[str, Any]:
    """In a fresh process whose ``sys.path`` starts at the code to measure."""
    import psycopg
    from psycopg._pipeline_base import BasePipeline

    from bench import load, stores
    from receiver.app import build_context
    from receiver.outbox.downstream import endpoints as endpoint_store
    from receiver.pipeline.processor import Pipeline
    from receiver.settings import load_settings
    from receiver.store import inbox

    exchanges = 0
    real_wait = psycopg.AsyncConnection.wait
    real_sync = BasePipeline._enqueue_sync

    async def counted_wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        # In pipeline mode psycopg waits once per statement it queues, but the server is
        # waited for once per Sync: those are counted instead.
        nonlocal exchanges
        if self._pipeline is None:
            exchanges += 1
        return await real_wait(self, *args, **kwargs)

    def counted_sync(self: Any) -> None:
        nonlocal exchanges
        exchanges += 1
        real_sync(self)

    # Statements too: in pipeline mode each one is a send of its own, and work for the server.
    statements = 0
    real_execute = psycopg.AsyncCursor.execute
    real_executemany = psycopg.AsyncCursor.executemany

    async def counted_execute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        nonlocal statements
        statements += 1
        return await real_execute(self, query, params, **kwargs)

    async def counted_executemany(self: Any, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        nonlocal statements
        params_seq = list(params_seq)
        statements += len(params_seq)
        return await real_executemany(self, query, params_seq, **kwargs)

    psycopg.AsyncConnection.wait = counted_wait  # type: ignore[method-assign]
    BasePipeline._enqueue_sync = counted_sync  # type: ignore[method-assign]
    psycopg.AsyncCursor.execute = counted_execute  # type: ignore[method-assign]
    psycopg.AsyncCursor.executemany = counted_executemany  # type: ignore[method-assign]
    stores.migrate(db_url)
    targets = stores.register(db_url, provider, REQUESTS, secret_key="s" * 40, seed="cost")
    settings = load_settings(
        purpose="bench",
        database_url=db_url,
        admin_token=secrets.token_urlsafe(24),
        secret_key="s" * 40,
        public_url="http://127.0.0.1:9",
        rules_module="bench.rules",
        okdokument_base_url="http://127.0.0.1:9",
        okdokument_api_key="k",
        okdokument_confirm_callbacks=False,
        firma_webhook_secrets=["x" * 32],
        log_level="warning",
        _env_file=None,
    )
    now = time.time()
    rows = []
    for i in range(events):
        target = targets[i % len(targets)]
        if provider == "firma":
            body = load.firma_body(target, f"evt_cost_{i}", now)
            channel, request_id = "webhook", None
        else:
            body = load.okdokument_body(target, "tostamp", i)
            channel, request_id = "sendinfo", target.request_id
        rows.append(
            inbox.insert_params(
                provider=provider,
                channel=channel,
                dedupe_key=f"cost-{i}",
                received_at=now,
                body=body,
                headers={},
                query="",
                request_id=request_id,
                external_id=target.external_id,
            )
        )

    async def main() -> dict[str, Any]:
        nonlocal exchanges, statements
        ctx = build_context(settings)
        await ctx.db.connect()
        try:
            async with ctx.db.transaction() as tx:
                await tx.executemany(inbox.INSERT_SQL, rows)
                for i in range(endpoints):
                    await endpoint_store.insert(
                        tx,
                        url=f"http://127.0.0.1:9/bench-{i}",
                        description="pipeline_cost",
                        kinds=[],
                        providers=[],
                        include_raw=False,
                        sealed_secret=secrets.token_hex(16),  # nothing is delivered
                        now=now,
                    )
            pipeline = Pipeline(ctx)
            exchanges = statements = 0
            cpu0, wall0 = time.process_time(), time.perf_counter()
            done = 0
            while done < events:
                processed = await pipeline.run_once()
                if processed == 0:
                    break
                done += processed
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            sent = statements
            left = await ctx.db.fetch_all(
                "SELECT status, COUNT(*) AS n FROM inbox GROUP BY status ORDER BY status"
            )
            queued = await ctx.db.fetch_all(
                "SELECT operation, COUNT(*) AS n FROM outbox GROUP BY operation ORDER BY operation"
            )
        finally:
            await ctx.db.close()
        return {
            "events": done,
            "round_trips_per_event": round(exchanges / max(done, 1), 2),
            "statements_per_event": round(sent / max(done, 1), 2),
            "cpu_us_per_event": round(cpu / max(done, 1) * 1e6),
            "wall_us_per_event": round(wall / max(done, 1) * 1e6),
            "statuses": {str(r["status"]): int(r["n"]) for r in left},
            "queued": {str(r["operation"]): int(r["n"]) for r in queued},
        }

    return asyncio.run(main())


def measure(
    root: Path, admin_url: str, provider: str, events: int, n: int, endpoints: int = 0
) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from bench import stores

    name = f"signback_bench_cost_{os.getpid()}_{n}"
    db_url = stores.create_postgres_database(admin_url, name)
    try:
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("SIGNBACK_")}
        out = subprocess.run(
            [
                sys.executable,
                str(HERE / "bench" / "pipeline_cost.py"),
                "--child",
                db_url,
                "--provider",
                provider,
                "--events",
                str(events),
                "--endpoints",
                str(endpoints),
            ],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        for line in out.stdout.splitlines():
            if line.startswith(RESULT):
                result: dict[str, Any] = json.loads(line.removeprefix(RESULT))
                return result
        raise RuntimeError(f"no result from {root}:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    finally:
        stores.drop_postgres_database(admin_url, name)


def export(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(HERE), "archive", ref], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", metavar="DB_URL")
    parser.add_argument("--provider", choices=("firma", "okdokument"), default="firma")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--endpoints", type=int, default=0, help="downstream endpoints")
    parser.add_argument("--against", metavar="REF", help="also measure this commit, in turns")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "SIGNBACK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, os.environ.get("PYTHONPATH", str(HERE)))
        result = child(args.child, args.provider, args.events, args.endpoints)
        print(RESULT + json.dumps(result), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="signback-cost-") as scratch:
        roots = [("this tree", HERE)]
        if args.against:
            roots.append((args.against, export(args.against, Path(scratch))))
        n = 0
        for round_no in range(args.rounds):
            for label, root in roots:
                n += 1
                result = measure(
                    root, args.postgres_url, args.provider, args.events, n, args.endpoints
                )
                print(json.dumps({"round": round_no + 1, "code": label, **result}), flush=True)


if __name__ == "__main__":
    main()
