"""What uvicorn's ASGI cycle costs a callback, and what signback's short path saves.

    python -m bench.asgi_cost [--seconds 10] [--rounds 2]

The same trivial hook (read the body, answer ``{"status":"accepted"}``, no database) behind
signback's ``HookRouter``, served by one uvicorn process in three ways, each saturated by
wrk (32 connections, 800-byte POST bodies) in turn, ``--rounds`` times:

- ``asgi``: uvicorn's httptools protocol and its ASGI cycle (how plain
  ``uvicorn receiver.app:create_app_from_env`` serves callbacks);
- ``short``: ``receiver.intake.protocol.HookHttpProtocol`` (how ``signback serve`` does);
- ``starlette``: for scale, bench.baseline's bare Starlette handler.

Reported: throughput, and the server's CPU time per request (from /proc, so it holds even
where wrk, not the server, is the limit). The difference in CPU per request between
``asgi`` and ``short`` is what the short path saves on each callback.
docs/performance.md quotes the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.load import find_wrk
from bench.procs import Procs, free_port, process_ticks, python_env
from receiver.intake.router import Answer, Callback, Hook, HookRouter
from receiver.metrics import Metrics

ACCEPTED = Answer.json(200, {"status": "accepted"})
MODES = ("asgi", "short", "starlette")
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = string.rep("x", 800)
wrk.headers["Content-Type"] = "application/json"
"""


async def accept(call: Callback) -> Answer:
    await call.read_body(1024 * 1024)
    return ACCEPTED


def create_app() -> HookRouter:
    async def healthz(_: object) -> Response:
        return JSONResponse({"status": "ok"})

    fallback = Starlette(routes=[Route("/healthz", healthz)])
    return HookRouter(fallback, [Hook("/hooks/bench", accept)], Metrics())


def serve(mode: str, port: int) -> None:
    import uvicorn

    from receiver.intake.protocol import HookHttpProtocol

    app = "bench.baseline:create_app" if mode == "starlette" else "bench.asgi_cost:create_app"
    # The options of receiver.cli.serve; only the protocol differs between asgi and short.
    uvicorn.run(
        app,
        factory=True,
        host="127.0.0.1",
        port=port,
        access_log=False,
        log_config=None,
        server_header=False,
        http=HookHttpProtocol if mode == "short" else "httptools",
    )


def measure(procs: Procs, wrk: str, script: Path, mode: str, seconds: float) -> tuple[float, float]:
    """Requests per second, and the server's CPU µs per request."""
    port = free_port()
    server = procs.python(
        f"asgi-cost-{mode}",
        ["-m", "bench.asgi_cost", "--serve", mode, "--port", str(port)],
        python_env(),
    )
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz")
        ticks = process_ticks(server.pid)
        out = subprocess.run(
            [
                wrk,
                "-t1",
                "-c32",
                f"-d{round(seconds)}s",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}/hooks/bench",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        ticks = process_ticks(server.pid) - ticks
    finally:
        procs.stop(server)
    lines = out.splitlines()
    rate = next(x for x in lines if x.startswith("Requests/sec:"))
    total = next(x for x in lines if " requests in " in x)
    non_2xx = next((x for x in lines if "Non-2xx" in x), None)
    if non_2xx:
        raise RuntimeError(f"{mode}: {non_2xx.strip()}")
    requests = int(total.split()[0])
    return float(rate.split()[1]), ticks / os.sysconf("SC_CLK_TCK") / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    wrk = find_wrk()
    if wrk is None:
        raise SystemExit("wrk is missing: apt-get install wrk (or python -m bench --install)")
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="signback-asgi-cost-") as scratch:
        script = Path(scratch) / "post.lua"
        script.write_text(WRK_SCRIPT)
        procs = Procs(Path(scratch))
        try:
            for _ in range(args.rounds):
                for mode in MODES:
                    rate, per_request = measure(procs, wrk, script, mode, args.seconds)
                    rates[mode].append(rate)
                    cpu[mode].append(per_request)
                    time.sleep(1)
        finally:
            procs.stop_all()
    print(f"{'mode':<10} {'requests/s':>12} {'server CPU µs/request':>22}   (each round)")
    for mode in MODES:
        each = ", ".join(f"{r:,.0f} / {c:.1f}" for r, c in zip(rates[mode], cpu[mode], strict=True))
        print(
            f"{mode:<10} {statistics.fmean(rates[mode]):>12,.0f}"
            f" {statistics.fmean(cpu[mode]):>22.1f}   ({each})"
        )
    saved = statistics.fmean(cpu["asgi"]) - statistics.fmean(cpu["short"])
    print(f"the short path saves {saved:.1f} µs of server CPU per callback")


if __name__ == "__main__":
    main()
