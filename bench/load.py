"""Load: wrk (a separate process, Lua script ``bench/wrk/callbacks.lua``) and the data it
posts; a paced Python sender for the light-load latency run.

Bodies are unique, as they are in real traffic, because duplicates are deduplicated (answered
200 but not stored again): OKdokument bodies carry a sequence number in a ``bench`` field
(signback ignores unknown fields), Firma events have unique ids and are HMAC-signed by the
bench with the receiver's secret, timestamps fresh (5-minute tolerance).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.procs import stat_fields
from bench.stores import Target
from handlers.firma import signature

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "callbacks.lua"
RESULT_PREFIX = "BENCH_RESULT "


class WrkMissing(RuntimeError):
    """wrk is not installed."""


def find_wrk() -> str | None:
    return shutil.which("wrk")


def wrk_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "?"


# --- data files ------------------------------------------------------------------------------


def okdokument_prefix(target: Target, state: str) -> str:
    """The documented sendInfo body, compact, with ``"bench":`` left open for the number."""
    body = json.dumps(
        {"state": state, "id": target.document_id, "signatureRequestId": target.external_id},
        separators=(",", ":"),
    )
    return body[:-1] + ',"bench":'


def okdokument_body(target: Target, state: str, seq: int) -> bytes:
    return f"{okdokument_prefix(target, state)}{seq}}}".encode()


def write_okdokument_data(path: Path, targets: Sequence[Target], *, state: str) -> Path:
    lines = ["template"]
    for target in targets:
        lines.append(f"/hooks/okdokument/{target.token}\t{okdokument_prefix(target, state)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def firma_body(target: Target, event_id: str, now: float) -> bytes:
    """A ``signing_request.recipient.signed`` event in Firma's current envelope."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".000Z"
    recipient = {
        "id": "rcp_" + target.document_id[:12],
        "email": "signer@example.com",
        "first_name": "Ada",
        "last_name": "Signer",
        "designation": "Signer",
        "order": 1,
        "signed_at": stamp,
    }
    payload = {
        "id": event_id,
        "type": "signing_request.recipient.signed",
        "created_at": stamp,
        "company_id": "cmp_bench",
        "workspace_id": "wsp_bench",
        "data": {
            "signing_request": {
                "id": target.external_id,
                "name": "Contract " + target.document_id[:8],
                "workspace_id": "wsp_bench",
                "created_at": stamp,
                "sent_at": stamp,
                "completed_at": None,
                "document_page_count": 3,
            },
            "recipients": [recipient],
            "recipient": recipient,
            "workspace": {"id": "wsp_bench", "name": "Bench"},
        },
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def write_firma_data(
    path: Path, targets: Sequence[Target], *, secret: str, count: int, run: int
) -> Path:
    """``count`` distinct events, signed now, spread over ``targets``."""
    now = time.time()
    timestamp = int(now)
    with path.open("w") as out:
        out.write("pool\n")
        for i in range(count):
            target = targets[i % len(targets)]
            event_id = f"evt_{run}_{i}_{uuid.uuid4().hex[:9]}"
            body = firma_body(target, event_id, now)
            header = signature.sign(secret, body, timestamp)
            out.write(
                f"/hooks/firma\t{header}\tsigning_request.recipient.signed\t{body.decode()}\n"
            )
    return path


# --- wrk -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    sent: int  # callbacks the script sent (not counting /healthz after a limit)
    n2xx: int
    accepted: int  # answered "accepted" (stored as new)
    duplicates: int  # answered "duplicate"
    other: int  # non-2xx answers
    wrapped: int  # times a pool of bodies was used up and restarted
    pool_size: int
    errors: dict[str, int]
    latency_ms: dict[str, float]
    raw: dict[str, Any] = field(repr=False)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    @classmethod
    def parse(cls, stdout: str) -> WrkResult:
        line = next((x for x in stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
        if line is None:
            raise RuntimeError(f"wrk printed no result line; its output:\n{stdout[-2000:]}")
        data: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
        return cls(
            requests=int(data["requests"]),
            duration_s=int(data["duration_us"]) / 1e6,
            sent=int(data["sent"]),
            n2xx=int(data["n2xx"]),
            accepted=int(data["accepted"]),
            duplicates=int(data["duplicates"]),
            other=int(data["other"]),
            wrapped=int(data["wrapped"]),
            pool_size=int(data["pool_size"]),
            errors={k: int(v) for k, v in data["errors"].items()},
            latency_ms={k: float(v) / 1000.0 for k, v in data["latency_us"].items()},
            raw=data,
        )


@dataclass(frozen=True)
class WrkOptions:
    binary: str
    threads: int = 1
    connections: int = 32
    timeout_s: int = 10


def wait_for_load(pid: int, threads: int, timeout: float = 60.0) -> bool:
    """Wait until wrk (``pid``) has started its ``threads`` load threads; False if it ended
    or ``timeout`` passed first.

    wrk runs the script's ``init`` for each thread before starting that thread: reading the
    data file, which for a Firma pool of 300,000 signed bodies takes seconds. The server
    idles meanwhile, and wrk's own rate counts only from the start of the threads, so the
    CPU figures must too: measured from wrk's launch, they showed the server idle for a
    fifth of a Firma run that it in fact spent at one full core."""
    deadline = time.monotonic() + timeout
    task_dir = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        try:
            if len(os.listdir(task_dir)) > threads:  # the main thread and every load thread
                return True
        except OSError:  # gone
            return False
        fields = stat_fields(Path(f"/proc/{pid}/stat"))
        if fields is None or fields[0] in ("Z", "X"):  # gone, or ended and not yet reaped
            return False
        time.sleep(0.01)
    return False


def run_wrk(
    options: WrkOptions,
    base_url: str,
    data_file: Path,
    *,
    duration_s: float,
    seq_base: int,
    limit_total: int = 0,
    log_path: Path,
    stop_when: Callable[[], bool] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> WrkResult:
    """Run wrk for ``duration_s`` (or until ``stop_when()``, checked every 0.5 s: then wrk
    gets SIGINT, prints its summary and exits). ``on_start`` gets wrk's pid."""
    per_thread = -(-limit_total // options.threads) if limit_total else 0
    argv = [
        options.binary,
        f"-t{options.threads}",
        f"-c{options.connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={options.timeout_s}s",
        "-s",
        str(LUA_SCRIPT),
        base_url,
        "--",
        str(data_file),
        str(options.threads),
        str(seq_base),
        str(per_thread),
    ]
    with log_path.open("ab") as log:
        log.write(f"\n----- {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            if on_start is not None:
                on_start(proc.pid)
            deadline = time.monotonic() + duration_s + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if stop_when is not None and stop_when():
                    proc.send_signal(signal.SIGINT)
                    break
                time.sleep(0.5)
            stdout, _ = proc.communicate(timeout=max(5.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        text = stdout.decode(errors="replace")
        log.write(text.encode())
    return WrkResult.parse(text)


# --- paced sender (light load) ---------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    seq: int
    sent_at: float  # unix seconds, just before the request went out
    status: int | None


async def paced_okdokument(
    base_url: str,
    targets: Sequence[Target],
    *,
    state: str,
    rate: float,
    count: int,
    seq_base: int,
) -> list[Sent]:
    """Open-loop: callback ``n`` is sent at ``start + n / rate`` whatever earlier ones do."""
    results: list[Sent] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as client:

        async def one(n: int, at: float) -> None:
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            seq = seq_base + n
            target = targets[seq % len(targets)]
            sent_at = time.time()
            try:
                reply = await client.post(
                    f"/hooks/okdokument/{target.token}",
                    content=okdokument_body(target, state, seq),
                    headers={"Content-Type": "application/json"},
                )
                status: int | None = reply.status_code
            except httpx.HTTPError:
                status = None
            results.append(Sent(seq, sent_at, status))

        start = time.monotonic() + 0.2
        await asyncio.gather(*(one(n, start + n / rate) for n in range(count)))
    return results
