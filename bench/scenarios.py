"""The scenarios: intake (SQLite, PostgreSQL), end to end, growth, memory, slow provider,
and the profiling pass. Each appends rows to the one results table."""

from __future__ import annotations

import asyncio
import os
import random
import resource
import secrets
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from bench import archive, downstream, load, profile, stores, sustained
from bench.load import WrkOptions, WrkResult
from bench.procs import (
    CLOCK_TICKS,
    LOOPBACK,
    CpuMeter,
    Proc,
    Procs,
    RssSampler,
    free_port,
    main_thread_ticks,
    process_ticks,
    python_env,
    wait_quiet,
)
from bench.report import Row, check, fmt_int, fmt_mib, fmt_ms
from bench.rules import seq_of
from bench.stores import Target
from receiver.intake.tokens import hook_token_for, token_hash
from receiver.store import requests as request_store
from receiver.store.db import open_database
from receiver.store.db.base import Database

OKD = "okdokument"
FIRMA = "firma"
CHANNEL = {OKD: "sendinfo", FIRMA: "webhook"}
NAME = {OKD: "OKdokument", FIRMA: "Firma"}
DB_NAME = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
FAKE_API_KEY = "fake-okdokument-key"
QUIET_CORES = 0.3  # other load (cores) under which a run counts as undisturbed
SCENARIOS = (
    "intake",
    "postgres",
    "e2e",
    "e2e_pg",
    "sustained",
    "slow",
    "memory",
    "growth",
    "downstream",
    "reconcile",
    "archive",
    "profile",
)


@dataclass(frozen=True)
class Sizes:
    """Durations and store sizes; ``--quick`` scales them down for a smoke run."""

    intake_s: float
    worker_off_rows: bool
    requests: int  # registered requests the intake load is spread over (per provider)
    e2e_callbacks: int
    e2e_requests: int
    light_s: float  # duration of the light-load latency run
    growth_small: tuple[int, int]  # (requests, events)
    growth_large: tuple[int, int]
    memory_window: int  # "the first and last N callbacks"
    memory_min_s: float  # the memory run lasts at least this long
    slow_s: float
    profile_s: int
    sustained_s: float  # each paced run of the sustained-load scenario

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            intake_s=20,
            worker_off_rows=True,
            requests=1000,
            e2e_callbacks=20_000,
            e2e_requests=2_000,
            light_s=20,
            growth_small=(1_000, 5_000),
            growth_large=(1_000_000, 5_000_000),
            memory_window=100_000,
            memory_min_s=30,
            slow_s=20,
            profile_s=15,
            sustained_s=60,
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            intake_s=3,
            worker_off_rows=False,
            requests=1000,
            e2e_callbacks=2_000,
            e2e_requests=200,
            light_s=2,
            growth_small=(1_000, 5_000),
            growth_large=(20_000, 100_000),
            memory_window=5_000,
            memory_min_s=6,
            slow_s=3,
            profile_s=2,
            sustained_s=8,
        )


@dataclass
class Config:
    run_dir: Path
    sizes: Sizes
    wrk: WrkOptions
    pyspy: str | None
    postgres_admin_url: str
    postgres_version: str | None
    quiet_wait_s: float = 120.0  # how long to wait for other load to settle before a run
    retries: int = 1  # measure an intake run again when other load disturbed it
    chart_path: Path | None = None  # where the sustained-load chart goes (an SVG)
    code_root: Path | None = None  # signback's code from another checkout (--code)


@dataclass
class Server:
    proc: Proc
    url: str
    db_url: str


@dataclass
class IntakeRun:
    result: WrkResult
    peak_rss_kib: int
    stored: int  # inbox rows found after kill -9
    acked: int  # callbacks answered "accepted" over all runs against that server
    done_actions: int = 0
    # Why its figures say nothing about the intake (see answers_invalid), None if they do.
    invalid: str | None = None


@dataclass
class Bench:
    config: Config
    procs: Procs
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cpu_notes: list[str] = field(default_factory=list)
    profiles: list[profile.ProfileSummary] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(40))
    firma_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    seed: str = field(default_factory=lambda: secrets.token_hex(4))
    _runs: int = 0
    last_others: float = 0.0  # cores other processes used during the last wrk run
    _pg_databases: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> Sizes:
        return self.config.sizes

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    def say(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def next_seq_base(self) -> int:
        self._runs += 1
        return self._runs * 100_000_000

    # --- databases ---------------------------------------------------------------------------

    def fresh_sqlite(self, name: str) -> str:
        path = self.run_dir / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = stores.sqlite_url(path)
        stores.migrate(url)
        return url

    def fresh_postgres(self) -> str:
        name = f"signback_bench_{self.seed}_{len(self._pg_databases)}"
        url = stores.create_postgres_database(self.config.postgres_admin_url, name)
        self._pg_databases.append(name)
        stores.migrate(url)
        return url

    def drop_postgres(self) -> None:
        while self._pg_databases:
            name = self._pg_databases.pop()
            try:
                stores.drop_postgres_database(self.config.postgres_admin_url, name)
            except Exception as exc:
                self.say(f"could not drop PostgreSQL database {name}: {exc}")

    def fresh_db(self, dialect: str, name: str) -> str:
        return self.fresh_postgres() if dialect == "postgresql" else self.fresh_sqlite(name)

    def register(self, url: str, provider: str, count: int) -> list[Target]:
        # Same seed, same order: every fresh store gets the same ids and tokens.
        return stores.register(url, provider, count, secret_key=self.secret_key, seed=self.seed)

    # --- processes ---------------------------------------------------------------------------

    def start_signback(
        self,
        name: str,
        db_url: str,
        *,
        worker: bool = True,
        fake_url: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Server:
        port = free_port()
        env = self.signback_env(db_url, port, worker=worker, fake_url=fake_url)
        env.update(extra_env or {})
        proc = self.procs.python(name, ["-m", "receiver.cli", "serve", "--port", str(port)], env)
        url = f"http://{LOOPBACK}:{port}"
        proc.wait_http(f"{url}/readyz")
        ready = httpx.get(f"{url}/readyz", timeout=10)
        if ready.status_code != 200:
            raise RuntimeError(f"{name} is not ready: {ready.text}")
        return Server(proc, url, db_url)

    def signback_env(
        self, db_url: str, port: int, *, worker: bool, fake_url: str | None
    ) -> dict[str, str]:
        env = python_env(
            {
                "SIGNBACK_DATABASE_URL": db_url,
                "SIGNBACK_ADMIN_TOKEN": self.admin_token,
                "SIGNBACK_SECRET_KEY": self.secret_key,
                "SIGNBACK_PUBLIC_URL": f"http://{LOOPBACK}:{port}",
                "SIGNBACK_FIRMA_WEBHOOK_SECRETS": self.firma_secret,
                "SIGNBACK_RULES_MODULE": "bench.rules",
                "SIGNBACK_OKDOKUMENT_CONFIRM_CALLBACKS": "false",
                "SIGNBACK_RUN_WORKER": "true" if worker else "false",
                "SIGNBACK_SHUTDOWN_GRACE_SECONDS": "2",
                "SIGNBACK_LOG_FORMAT": "json",
            }
        )
        if fake_url is not None:
            env["SIGNBACK_OKDOKUMENT_BASE_URL"] = fake_url
            env["SIGNBACK_OKDOKUMENT_API_KEY"] = FAKE_API_KEY
        if self.config.code_root is not None:
            # That checkout first: its receiver and handlers; bench.rules from either.
            env["PYTHONPATH"] = f"{self.config.code_root}:{env['PYTHONPATH']}"
        return env

    def start_workers(
        self, server: Server, count: int, *, fake_url: str | None = None
    ) -> list[Proc]:
        """``count`` ``signback worker`` processes next to ``server`` (started --no-worker)."""
        port = int(server.url.rsplit(":", 1)[1])
        env = self.signback_env(server.db_url, port, worker=True, fake_url=fake_url)
        return [
            self.procs.python(f"signback-worker-{i + 1}", ["-m", "receiver.cli", "worker"], env)
            for i in range(count)
        ]

    def start_baseline(self) -> tuple[Proc, str]:
        port = free_port()
        proc = self.procs.python(
            "baseline", ["-m", "bench.baseline", "--port", str(port)], python_env()
        )
        url = f"http://{LOOPBACK}:{port}"
        proc.wait_http(f"{url}/healthz")
        return proc, url

    def start_fake(self, targets: Sequence[Target], *, delay_patches: float = 0.0) -> str:
        port = free_port()
        proc = self.procs.python(
            "fake-okdokument",
            ["-m", "receiver.cli", "fake", "okdokument", "--port", str(port)],
            python_env(),
        )
        url = f"http://{LOOPBACK}:{port}"
        proc.wait_http(f"{url}/_fake/calls")
        with httpx.Client(base_url=url, timeout=30) as client:
            for target in targets:
                reply = client.post(
                    "/_fake/signature-requests",
                    json={
                        "signatureRequestId": target.external_id,
                        "documentId": target.document_id,
                    },
                )
                reply.raise_for_status()
            if delay_patches:
                client.post(
                    "/_fake/failures",
                    json={"delay": delay_patches, "seconds": 600, "methods": ["PATCH"]},
                ).raise_for_status()
        return url

    def stop_fakes(self) -> None:
        for proc in [p for p in self.procs.started if p.name == "fake-okdokument"]:
            self.procs.stop(proc)

    def kill9(self, server: Server) -> None:
        server.proc.kill9()
        self.procs.stop(server.proc)

    # --- load --------------------------------------------------------------------------------

    def okd_data(self, targets: Sequence[Target], state: str) -> Path:
        # Named after this bench's seed too: the tokens are derived from it, and a file left
        # in a reused --run-dir by an earlier bench would send every callback to a 404.
        path = (
            self.run_dir
            / f"okdokument-{self.seed}-{state}-{len(targets)}-{targets[0].request_id}.tsv"
        )
        if not path.exists():
            load.write_okdokument_data(path, targets, state=state)
        return path

    def firma_data(self, targets: Sequence[Target], count: int) -> Path:
        """A fresh pool (signatures are only valid for 5 minutes)."""
        path = self.run_dir / "firma-pool.tsv"
        load.write_firma_data(path, targets, secret=self.firma_secret, count=count, run=self._runs)
        return path

    def firma_pool_size(self, seconds: float) -> int:
        # The fastest OKdokument intake of this run so far (a Firma event is unique only
        # once: a pool that wraps measures duplicates); 6,000/s when none ran.
        known = [rate for name, rate in self.rates.items() if name.startswith("okdokument-")]
        expected = max([*known, 6000.0])
        return int(min(600_000, max(20_000, expected * seconds * 1.5)))

    def wrk(
        self,
        url: str,
        data: Path,
        seconds: float,
        *,
        label: str,
        server_pid: int | None = None,
        limit: int = 0,
        stop_when: Callable[[], bool] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> WrkResult:
        """One wrk run, after waiting for other load on the machine to settle; the CPU used
        by the server, by wrk and by everything else is noted for the report."""
        others_before = wait_quiet(self.config.quiet_wait_s, threshold=QUIET_CORES, say=self.say)
        meter = CpuMeter([server_pid] if server_pid is not None else [])
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        loading_ticks = 0  # wrk's CPU before its load began (reading its data)
        load_seen = True

        def started(pid: int) -> None:
            # The CPU figures cover the load itself, as wrk's rate does (see wait_for_load).
            nonlocal loading_ticks, load_seen
            load_seen = load.wait_for_load(pid, self.config.wrk.threads)
            meter.restart()
            # wrk's main thread reads the data for every thread; the load threads only send.
            loading_ticks = main_thread_ticks(pid)
            if on_start is not None:
                on_start(pid)

        with meter:
            result = load.run_wrk(
                self.config.wrk,
                url,
                data,
                duration_s=seconds,
                seq_base=self.next_seq_base(),
                limit_total=limit,
                log_path=self.run_dir / "wrk.log",
                stop_when=stop_when,
                on_start=started,
            )
            # wrk is the only child waited for meanwhile: its CPU shows up here.
            children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_seconds = (
            children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime
        ) - loading_ticks / CLOCK_TICKS
        wrk_cores = max(0.0, wrk_seconds) / max(meter.seconds, 1e-6)
        server_cores = meter.per_pid.get(server_pid, 0.0) if server_pid is not None else 0.0
        loop_cores = meter.main_thread.get(server_pid, 0.0) if server_pid is not None else 0.0
        self.last_others = max(0.0, meter.others - wrk_cores)
        pg = f", PostgreSQL {meter.postgres:.2f}" if meter.postgres >= 0.01 else ""
        self.cpu_notes.append(
            f"{label}: server {server_cores:.2f} (its event-loop thread {loop_cores:.2f}), "
            f"wrk {wrk_cores:.2f}{pg}, other processes "
            f"{self.last_others:.2f} cores (before the run: {others_before:.2f})"
            + ("" if load_seen else "; wrk's load start not seen (it ended, or loaded for 60 s)")
        )
        return result

    def baseline(self, provider: str, targets: Sequence[Target], *, when: str) -> WrkResult:
        """The bare handler with the same bodies, measured now (``when``: for the CPU notes).

        Each intake run is bracketed by two of these, one just before and one just after,
        and compared with their mean: this machine's speed drifts by tens of percent within
        minutes, and a baseline taken once per bench run made the ratios drift with it."""
        proc, url = self.start_baseline()
        try:
            self.say(f"baseline: bare Starlette handler, {NAME[provider]} bodies ({when})")
            data = (
                self.okd_data(targets, "tosign")
                if provider == OKD
                else self.firma_data(targets, 20_000)
            )
            best: tuple[float, WrkResult] | None = None
            for attempt in range(1 + self.config.retries):
                result = self.wrk(
                    url,
                    data,
                    self.sizes.intake_s,
                    label=f"Baseline · {NAME[provider]} bodies, {when}"
                    + (f" (again, #{attempt + 1})" if attempt else ""),
                    server_pid=proc.pid,
                )
                if best is None or self.last_others < best[0]:
                    best = (self.last_others, result)
                if self.last_others <= QUIET_CORES:
                    break
            assert best is not None
            return best[1]
        finally:
            self.procs.stop(proc)

    def intake_once(
        self,
        server: Server,
        provider: str,
        data: Path | Callable[[], Path],
        seconds: float,
        *,
        label: str,
        retries: int = 0,
        count: Callable[[], int | None] | None = None,
        sampler_out: list[RssSampler] | None = None,
    ) -> IntakeRun:
        """wrk against ``server``, then kill -9 it and count what survived.

        When other processes took more than ``QUIET_CORES`` during the run, it is measured
        again (at most ``retries`` times, same server) and the least disturbed run is kept;
        the kill -9 check covers every run's acknowledgements."""
        after = stores.max_inbox_id(server.db_url)
        acked = 0
        invalid: str | None = None
        best: tuple[float, WrkResult] | None = None
        with RssSampler(server.proc.pid, count=count) as sampler:
            for attempt in range(1 + retries):
                result = self.wrk(
                    server.url,
                    data() if callable(data) else data,
                    seconds,
                    label=label + (f" (again, #{attempt + 1})" if attempt else ""),
                    server_pid=server.proc.pid,
                )
                acked += result.accepted
                # Refusals are fast: one run of them makes the server's figures meaningless.
                invalid = invalid or answers_invalid(result)
                if best is None or self.last_others < best[0]:
                    best = (self.last_others, result)
                if self.last_others <= QUIET_CORES:
                    break
                if attempt < retries:
                    self.say(
                        f"{label}: other processes took {self.last_others:.1f} cores during "
                        "the run; measuring again"
                    )
        self.kill9(server)
        stored = stores.inbox_count(server.db_url, after_id=after, channel=CHANNEL[provider])
        if sampler_out is not None:
            sampler_out.append(sampler)
        assert best is not None
        return IntakeRun(best[1], sampler.peak_kib, stored, acked=acked, invalid=invalid)

    def intake_rows(
        self,
        scenario: str,
        run: IntakeRun,
        baseline: WrkResult | None,
        *,
        min_ratio: float | None,
        max_p99_ms: float | None,
    ) -> None:
        r = run.result
        ratio = r.rps / baseline.rps if baseline is not None and baseline.rps else None
        invalid = run.invalid
        self.rows.append(
            Row(
                scenario,
                "requests/s",
                fmt_int(r.rps),
                fmt_int(baseline.rps) if baseline is not None else "",
                f"{ratio:.2f}x" if ratio is not None else "",
                f"≥ {min_ratio}x bare" if min_ratio else "",
                check(
                    invalid is None and ratio >= min_ratio,
                    invalid or f"({ratio / min_ratio - 1:+.0%})",
                )
                if min_ratio and ratio is not None
                else "",
            )
        )
        p99 = r.latency_ms["p99"]
        self.rows.append(
            Row(
                scenario,
                "latency p50 / p99",
                f"{fmt_ms(r.latency_ms['p50'])} / {fmt_ms(p99)}",
                f"{fmt_ms(baseline.latency_ms['p50'])} / {fmt_ms(baseline.latency_ms['p99'])}"
                if baseline is not None
                else "",
                "",
                f"p99 ≤ {max_p99_ms:g} ms" if max_p99_ms else "",
                check(
                    invalid is None and p99 <= max_p99_ms, invalid or f"(x{p99 / max_p99_ms:.1f})"
                )
                if max_p99_ms
                else "",
            )
        )
        acked = run.acked
        self.rows.append(
            Row(
                scenario,
                "kill -9: stored / acknowledged",
                f"{run.stored:,} / {acked:,}",
                "",
                "",
                "every ack stored",
                check(run.stored >= acked and acked > 0, f"({acked - run.stored:,} lost)"),
            )
        )
        problems = []
        if r.other:
            problems.append(f"{r.other:,} non-2xx answers")
        if r.error_total:
            problems.append(f"socket errors {r.errors}")
        if r.duplicates:
            problems.append(f"{r.duplicates:,} duplicates (body pool wrapped {r.wrapped}x)")
        if problems:
            self.notes.append(f"{scenario}: " + "; ".join(problems) + ".")

    # --- intake ------------------------------------------------------------------------------

    def scenario_intake(self, dialect: str = "sqlite") -> None:
        label = "SQLite" if dialect == "sqlite" else "PostgreSQL"
        min_ratio, max_p99 = (0.5, 10.0) if dialect == "sqlite" else (0.3, 20.0)
        n = self.sizes.requests
        seconds = self.sizes.intake_s
        variants = [True, False] if self.sizes.worker_off_rows else [True]
        for provider in (OKD, FIRMA):
            for worker in variants:
                url = self.fresh_db(dialect, f"intake-{provider}")
                targets = self.register(url, provider, n)
                before = self.baseline(provider, targets, when="before")
                data: Path | Callable[[], Path] = (
                    self.okd_data(targets, "tosign")
                    if provider == OKD
                    else lambda targets=targets: self.firma_data(
                        targets, self.firma_pool_size(seconds)
                    )
                )
                self.say(f"intake: {NAME[provider]} on {label}, worker {'on' if worker else 'off'}")
                server = self.start_signback(f"signback-{provider}-{dialect}", url, worker=worker)
                scenario = f"Intake · {NAME[provider]} · {label}" + (
                    "" if worker else " · worker off"
                )
                run = self.intake_once(
                    server, provider, data, seconds, label=scenario, retries=self.config.retries
                )
                after = self.baseline(provider, targets, when="after")
                base = bracketed(before, after)
                self.notes.append(
                    f"{scenario}: bare handler {fmt_int(before.rps)} req/s just before, "
                    f"{fmt_int(after.rps)} just after; the ratio is against their mean."
                )
                self.intake_rows(
                    scenario,
                    run,
                    base,
                    min_ratio=min_ratio if worker else None,
                    max_p99_ms=max_p99 if worker else None,
                )
                self.rows.append(
                    Row(scenario, "peak RSS", fmt_mib(run.peak_rss_kib), "", "", "", "")
                )
                if worker:
                    self.rates[f"{provider}-{dialect}"] = run.result.rps

    def scenario_postgres(self) -> None:
        if self.config.postgres_version is None:
            self.notes.append(
                f"PostgreSQL rows skipped: no server at {self.config.postgres_admin_url} "
                "(set --postgres-url)."
            )
            return
        try:
            self.scenario_intake("postgresql")
        finally:
            self.drop_postgres()

    # --- end to end --------------------------------------------------------------------------

    def e2e_sustained(
        self, server: Server, data: Path, total: int, *, profile_to: Path | None = None
    ) -> tuple[WrkResult, int]:
        """Send ``total`` callbacks with wrk; wait until the outbox has sent as many PATCHes.
        Returns wrk's result and the inbox id before the run."""
        after = stores.max_inbox_id(server.db_url)
        done_before = stores.outbox_finished(server.db_url)

        def all_sent() -> bool:
            return stores.inbox_count(server.db_url, after_id=after, channel="sendinfo") >= total

        started: list[Proc] = []

        def on_start(_pid: int) -> None:
            if profile_to is not None and self.config.pyspy:
                started.append(
                    profile.start(
                        self.procs,
                        self.config.pyspy,
                        server.proc.pid,
                        profile_to,
                        duration_s=self.sizes.profile_s,
                    )
                )

        result = self.wrk(
            server.url,
            data,
            max(60.0, total / 200),
            label="End to end" + (" (profiled)" if profile_to is not None else ""),
            server_pid=server.proc.pid,
            limit=total,
            stop_when=all_sent,
            on_start=on_start,
        )
        self.wait_outbox(server, done_before + total, timeout=max(120.0, total / 50))
        for proc in started:
            with_timeout_wait(proc, self.sizes.profile_s + 15)
            self.procs.stop(proc)
        return result, after

    def wait_outbox(self, server: Server, finished: int, *, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_done = stores.outbox_finished(server.db_url)
            if now_done >= finished:
                return now_done
            if now_done != last:
                last, last_change = now_done, time.monotonic()
            elif time.monotonic() - last_change > 60:
                break
            time.sleep(0.25)
        counts = stores.outbox_status_counts(server.db_url)
        raise RuntimeError(
            f"the outbox did not reach {finished:,} finished actions (now {counts}); "
            f"see {server.proc.log_path}"
        )

    def scenario_e2e(self) -> None:
        self.e2e("sqlite")

    def scenario_e2e_pg(self) -> None:
        """End to end on PostgreSQL: one ``serve``, then the scale-out shape (one
        ``serve --no-worker`` and two ``worker`` processes)."""
        if self.config.postgres_version is None:
            self.notes.append("PostgreSQL end to end skipped: no server (set --postgres-url).")
            return
        try:
            self.e2e("postgresql")
            self.e2e("postgresql", workers=2)
        finally:
            self.drop_postgres()

    def e2e(self, dialect: str, *, workers: int = 0) -> None:
        """Callback → PATCH; ``workers``: that many ``signback worker`` processes beside a
        ``serve --no-worker`` (0: one ``serve`` with its worker)."""
        total, n = self.sizes.e2e_callbacks, self.sizes.e2e_requests
        url = self.fresh_db(dialect, "e2e")
        targets = self.register(url, OKD, n)
        scenario = f"End to end · {DB_NAME[dialect]}" + (
            f" · serve --no-worker + {workers} workers" if workers else ""
        )
        self.say(f"{scenario}: {total:,} callbacks for {n:,} requests, one PATCH each")
        fake = self.start_fake(targets)
        server = self.start_signback("signback-e2e", url, fake_url=fake, worker=not workers)
        extra = self.start_workers(server, workers, fake_url=fake)
        pids = [server.proc.pid, *(proc.pid for proc in extra)]
        try:
            data = self.okd_data(targets, "tostamp")
            ticks = sum(process_ticks(pid) for pid in pids)
            result, after = self.e2e_sustained(server, data, total)
            cpu_s = (sum(process_ticks(pid) for pid in pids) - ticks) / CLOCK_TICKS
            calls = httpx.get(f"{fake}/_fake/calls", timeout=60).json()
            patches = patch_times(calls)
            first = min(stores.received_times(url, after_id=after))
            last = max(t for t, _ in patches.values()) if patches else first
            rate = total / (last - first) if last > first else 0.0
            ok_patches = sum(1 for _, status in patches.values() if status == 200)
            self.rates[f"e2e-{dialect}-{workers}"] = rate
            if dialect == "sqlite" and not workers:
                self.rates["e2e"] = rate
            self.rows.append(
                Row(
                    scenario,
                    "events/s, first callback → last PATCH",
                    fmt_int(rate),
                    "",
                    "",
                    "≥ 1,500/s",
                    check(rate >= 1500, f"({rate / 1500 - 1:+.0%})"),
                )
            )
            self.rows.append(
                Row(
                    scenario,
                    "callbacks acked / PATCHes (200)",
                    f"{result.accepted:,} / {ok_patches:,}",
                    "",
                    "",
                    f"{total:,} / {total:,}",
                    check(result.accepted >= total and ok_patches >= total),
                )
            )
            self.rows.append(
                Row(
                    scenario,
                    "CPU per event, every signback process (callback, processing, PATCH)",
                    f"{cpu_s / total * 1e6:,.0f} µs",
                )
            )
            self.notes.append(
                f"{scenario}: {total:,} callbacks sent in {result.duration_s:.1f} s by wrk "
                f"({result.requests / max(result.duration_s, 1e-9):,.0f}/s incl. the last "
                f"/healthz polls); last PATCH {last - first:.1f} s after the first callback; "
                f"signback used {cpu_s:.1f} CPU seconds."
            )
            if workers:
                return
            # Light load: 10 % of the sustained rate, callback → PATCH per callback.
            light_rate = max(5.0, 0.1 * rate)
            count = max(50, int(light_rate * self.sizes.light_s))
            self.say(f"end to end, light load: {count} callbacks at {light_rate:.0f}/s")
            done_before = stores.outbox_finished(url)
            base = self.next_seq_base()
            sent = asyncio.run(
                load.paced_okdokument(
                    server.url,
                    targets,
                    state="tostamp",
                    rate=light_rate,
                    count=count,
                    seq_base=base,
                )
            )
            self.wait_outbox(server, done_before + count, timeout=120)
            calls = httpx.get(f"{fake}/_fake/calls", timeout=60).json()
            patches = patch_times(calls)
            latencies = sorted(
                (patches[s.seq][0] - s.sent_at) * 1000 for s in sent if s.seq in patches
            )
            p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
            self.rows.append(
                Row(
                    f"{scenario} · light load",
                    f"callback → PATCH p50 / p99 at {light_rate:.0f}/s",
                    f"{fmt_ms(p50)} / {fmt_ms(p99)}",
                    "",
                    "",
                    "p50 ≤ 20 ms",
                    check(p50 <= 20, f"(x{p50 / 20:.1f})"),
                )
            )
            if len(latencies) < count:
                self.notes.append(
                    f"End to end, light load: only {len(latencies)} of {count} callbacks were "
                    "matched with a PATCH."
                )
        finally:
            for proc in extra:
                self.procs.stop(proc)
            self.procs.stop(server.proc)
            self.stop_fakes()

    # --- sustained load ---------------------------------------------------------------------

    def scenario_sustained(self) -> None:
        sustained.scenario(self)

    # --- slow provider -----------------------------------------------------------------------

    def scenario_slow(self) -> None:
        seconds = self.sizes.slow_s
        # Fast, slow, fast again: the slow run is compared with the mean of the two around
        # it, so that the machine's drift during the scenario does not pass for an effect.
        runs: dict[str, IntakeRun] = {}
        for name, delay in (("fast", 0.0), ("slow", 2.0), ("fast again", 0.0)):
            # A fresh store, emulator and server for each attempt (a second run on the same
            # ones would start with the first one's outbox backlog); the least disturbed
            # attempt is kept.
            best: tuple[float, IntakeRun] | None = None
            for attempt in range(1 + self.config.retries):
                url = self.fresh_sqlite(f"slow-{name.replace(' ', '-')}")
                targets = self.register(url, OKD, self.sizes.requests)
                self.say(f"slow provider: intake with a PATCH per callback, provider {name}")
                fake = self.start_fake(targets, delay_patches=delay)
                try:
                    server = self.start_signback(
                        f"signback-{name.replace(' ', '-')}-provider", url, fake_url=fake
                    )
                    run = self.intake_once(
                        server,
                        OKD,
                        self.okd_data(targets, "tostamp"),
                        seconds,
                        label=f"Slow provider · {name}"
                        + (f" (again, #{attempt + 1})" if attempt else ""),
                    )
                    run.done_actions = stores.outbox_finished(url)
                finally:
                    self.stop_fakes()
                if best is None or self.last_others < best[0]:
                    best = (self.last_others, run)
                if self.last_others <= QUIET_CORES:
                    break
            assert best is not None
            runs[name] = best[1]
        fast_runs, slow = (runs["fast"], runs["fast again"]), runs["slow"]
        fast_result = bracketed(fast_runs[0].result, fast_runs[1].result)
        ratio = slow.result.rps / fast_result.rps if fast_result.rps else 0.0
        p99_ratio = (
            slow.result.latency_ms["p99"] / fast_result.latency_ms["p99"]
            if fast_result.latency_ms["p99"]
            else 0.0
        )
        scenario = "Slow provider (PATCH answers after 2 s) · SQLite"
        invalid = first_invalid(slow, *fast_runs)
        self.rows.append(
            Row(
                scenario,
                "requests/s vs same load, fast provider (runs before and after)",
                fmt_int(slow.result.rps),
                f"{fmt_int(fast_runs[0].result.rps)} / {fmt_int(fast_runs[1].result.rps)}",
                f"{ratio:.2f}x",
                "within 10 %",
                check(invalid is None and abs(ratio - 1) <= 0.10, invalid or f"({ratio - 1:+.0%})"),
            )
        )
        self.rows.append(
            Row(
                scenario,
                "latency p99 vs fast provider",
                fmt_ms(slow.result.latency_ms["p99"]),
                " / ".join(fmt_ms(run.result.latency_ms["p99"]) for run in fast_runs),
                f"{p99_ratio:.2f}x",
                "within 10 %",
                check(invalid is None and p99_ratio <= 1.10, invalid or f"({p99_ratio - 1:+.0%})"),
            )
        )
        self.rows.append(
            Row(
                scenario,
                "kill -9: stored / acknowledged",
                f"{slow.stored:,} / {slow.acked:,}",
                " · ".join(f"{run.stored:,} / {run.acked:,}" for run in fast_runs),
                "",
                "every ack stored",
                check(all(run.stored >= run.acked for run in (slow, *fast_runs))),
            )
        )
        self.notes.append(
            f"Slow provider: PATCHes finished during the {seconds:g} s run: "
            f"{slow.done_actions:,} with the slow provider, "
            f"{' and '.join(f'{run.done_actions:,}' for run in fast_runs)} with the fast one "
            "(each callback queues one)."
        )

    # --- memory ------------------------------------------------------------------------------

    def scenario_memory(self) -> None:
        window = self.sizes.memory_window
        rate = self.rates.get("okdokument-sqlite", 3000.0)
        seconds = min(300.0, max(self.sizes.memory_min_s, 3 * window / max(rate, 1.0) + 5))
        url = self.fresh_sqlite("memory")
        targets = self.register(url, OKD, self.sizes.requests)
        self.say(f"memory: OKdokument intake on SQLite for {seconds:.0f} s, sampling RSS")
        server = self.start_signback("signback-memory", url)
        counter = stores.SqliteCounter(url)
        samplers: list[RssSampler] = []
        try:
            run = self.intake_once(
                server,
                OKD,
                self.okd_data(targets, "tosign"),
                seconds,
                label="Memory",
                count=counter.max_id,
                sampler_out=samplers,
            )
        finally:
            counter.close()
        samples = [s for s in samplers[0].samples if s.count is not None]
        total = max((s.count or 0 for s in samples), default=0)
        first = [s.rss_kib for s in samples if (s.count or 0) <= window]
        last = [s.rss_kib for s in samples if (s.count or 0) >= total - window]
        scenario = "Memory · OKdokument intake · SQLite"
        invalid = run.invalid or (None if total > 0 else "(invalid: no callback was stored)")
        self.rows.append(
            Row(
                scenario,
                f"peak RSS over {total:,} callbacks",
                fmt_mib(run.peak_rss_kib),
                "",
                "",
                "≤ 150 MiB",
                check(
                    invalid is None and run.peak_rss_kib <= 150 * 1024,
                    invalid or "",
                ),
            )
        )
        if total >= 2 * window and first and last:
            growth = max(last) - max(first)
            self.rows.append(
                Row(
                    scenario,
                    f"RSS growth, first → last {window:,} callbacks",
                    f"{growth / 1024:+.1f} MiB",
                    f"{max(first) / 1024:.0f} → {max(last) / 1024:.0f} MiB",
                    "",
                    "no growth (≤ 2 MiB)",
                    check(invalid is None and growth <= 2 * 1024, invalid or ""),
                )
            )
        else:
            self.notes.append(
                f"Memory: only {total:,} callbacks stored, fewer than 2 x {window:,}; no growth "
                "comparison."
            )
        self.intake_rows(scenario, run, None, min_ratio=None, max_p99_ms=None)

    # --- growth ------------------------------------------------------------------------------

    def scenario_growth(self) -> None:
        filled: dict[str, stores.Filled] = {}
        urls: dict[str, tuple[str, int]] = {}
        data: dict[str, Path] = {}  # each store's load, written once for all its runs
        for name, (n_requests, n_events) in (
            ("small", self.sizes.growth_small),
            ("large", self.sizes.growth_large),
        ):
            path = self.run_dir / f"growth-{name}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self.say(f"growth: filling {n_requests:,} requests and {n_events:,} events")
            filled[name] = stores.fill_sqlite(
                path,
                requests=n_requests,
                events=n_events,
                hit=self.sizes.requests,
                secret_key=self.secret_key,
                seed=self.seed,
            )
            self.notes.append(
                f"Growth: filled {n_requests:,} requests + {n_events:,} events in "
                f"{filled[name].seconds:.0f} s ({filled[name].file_bytes / 2**30:.2f} GiB file)."
            )
            urls[name] = (stores.sqlite_url(path), n_requests)
            data[name] = load.write_okdokument_data(
                self.run_dir / f"growth-{name}.tsv", filled[name].targets, state="tosign"
            )
        # The large fill leaves gigabytes of dirty pages for the kernel to write back; a run
        # measured meanwhile has its tail stretched by that I/O (a small-store p99 of 61 ms
        # against 16 ms after it). Let it finish first.
        self.say("growth: waiting for the fills to reach the disk (sync)")
        os.sync()

        def intake(name: str, when: str = "") -> IntakeRun:
            server = self.start_signback(f"signback-growth-{name}", urls[name][0])
            return self.intake_once(
                server,
                OKD,
                data[name],
                self.sizes.intake_s,
                label=f"Growth · {name} store{when}",
                retries=self.config.retries,
            )

        # The machine's speed drifts by tens of percent within minutes: the small store is
        # measured just before and just after the large one, and compared with their mean;
        # the lookups of the two stores take turns, round by round.
        small_before = intake("small", ", before")
        large = intake("large")
        small_after = intake("small", ", after")
        small = replace(
            small_before,
            result=bracketed(small_before.result, small_after.result),
            stored=small_before.stored + small_after.stored,
            acked=small_before.acked + small_after.acked,
        )
        self.notes.append(
            "Growth: small store intake p99 "
            f"{fmt_ms(small_before.result.latency_ms['p99'])} just before the large store's "
            f"run, {fmt_ms(small_after.result.latency_ms['p99'])} just after; the ratio is "
            "against their mean."
        )
        matches = asyncio.run(self.match_times(urls))
        small_match, large_match = matches["small"], matches["large"]
        small_fill, large_fill = filled["small"], filled["large"]
        scenario = (
            f"Growth · {large_fill.requests:,} vs {small_fill.requests:,} requests "
            f"({large_fill.events:,} vs {small_fill.events:,} events)"
        )
        p99_small, p99_large = small.result.latency_ms["p99"], large.result.latency_ms["p99"]
        invalid = first_invalid(small_before, large, small_after)
        self.rows.append(
            Row(
                scenario,
                "intake p99 (requests/s)",
                f"{fmt_ms(p99_large)} ({fmt_int(large.result.rps)})",
                f"{fmt_ms(p99_small)} ({fmt_int(small.result.rps)})",
                f"{p99_large / p99_small:.2f}x" if p99_small else "",
                "≤ 1.2x",
                check(
                    invalid is None and p99_large <= 1.2 * p99_small,
                    invalid or f"({p99_large / p99_small - 1.2:+.2f}x)",
                ),
            )
        )
        for key, label in (("token", "token lookup (intake)"), ("external", "match by id")):
            s50, s99 = small_match[key]
            l50, l99 = large_match[key]
            self.rows.append(
                Row(
                    scenario,
                    f"{label} p50 / p99",
                    f"{l50:.0f} / {l99:.0f} µs",
                    f"{s50:.0f} / {s99:.0f} µs",
                    f"{l99 / s99:.2f}x" if s99 else "",
                    "p99 ≤ 1.2x",
                    check(l99 <= 1.2 * s99, f"({l99 / s99 - 1.2:+.2f}x)"),
                )
            )
        self.rows.append(
            Row(
                scenario,
                "kill -9: stored / acknowledged",
                f"{large.stored:,} / {large.acked:,}",
                f"{small.stored:,} / {small.acked:,}",
                "",
                "every ack stored",
                check(large.stored >= large.acked and small.stored >= small.acked),
            )
        )

    async def match_times(
        self, stores_by_name: dict[str, tuple[str, int]]
    ) -> dict[str, dict[str, tuple[float, float]]]:
        """p50/p99 in µs of the two lookups that match a callback to its request, through
        signback's own store code: by sendInfo token hash (intake) and by provider id
        (pipeline), for each store (url and number of requests), by name."""
        keys: dict[str, list[tuple[str, str]]] = {}
        dbs: dict[str, Database] = {}
        for name, (url, n_requests) in stores_by_name.items():
            rng = random.Random(self.seed + url)
            picks = [rng.randrange(n_requests) for _ in range(1000)]
            keys[name] = [
                (
                    token_hash(hook_token_for(self.secret_key, stores.nonce_of(self.seed, i))),
                    stores.external_id_of(self.seed, OKD, i),
                )
                for i in picks
            ]
        # Five rounds over the same random requests, the stores taking turns; each store's
        # best round is kept, so that a burst of other load on the machine does not pass for
        # the store's cost, nor the machine's drift for a difference between the stores.
        best: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in stores_by_name}
        try:
            for name, (url, _) in stores_by_name.items():
                dbs[name] = open_database(url)
                await dbs[name].connect()
            for _ in range(5):
                for name, db in dbs.items():
                    timings: dict[str, list[float]] = {"token": [], "external": []}
                    for digest, external in keys[name]:
                        t0 = time.perf_counter()
                        row = await request_store.by_hook_hash(db, digest)
                        t1 = time.perf_counter()
                        other = await request_store.by_external_id(db, OKD, external)
                        t2 = time.perf_counter()
                        if row is None or other is None:
                            raise RuntimeError("growth store: a filled request was not found")
                        timings["token"].append((t1 - t0) * 1e6)
                        timings["external"].append((t2 - t1) * 1e6)
                    for key, values in timings.items():
                        p50, p99 = percentile(values, 50), percentile(values, 99)
                        if key not in best[name] or p99 < best[name][key][1]:
                            best[name][key] = (p50, p99)
        finally:
            for db in dbs.values():
                await db.close()
        return best

    # --- downstream delivery (bench/downstream.py) --------------------------------------------

    def scenario_downstream(self) -> None:
        downstream.scenario(self)

    def scenario_reconcile(self) -> None:
        from bench import reconcile

        reconcile.scenario(self)

    def scenario_archive(self) -> None:
        archive.scenario(self)

    # --- profiles ----------------------------------------------------------------------------

    def scenario_profile(self) -> None:
        binary = self.config.pyspy
        if binary is None:
            self.notes.append(
                "Profiles skipped: py-spy is not installed (.venv/bin/pip install py-spy)."
            )
            return
        seconds = self.sizes.profile_s
        cases = [(OKD, "sqlite"), (FIRMA, "sqlite")]
        if self.config.postgres_version is not None:
            cases.append((OKD, "postgresql"))
        try:
            for provider, dialect in cases:
                label = "SQLite" if dialect == "sqlite" else "PostgreSQL"
                name = f"Intake · {NAME[provider]} · {label}"
                self.say(f"profile: {name}")
                url = self.fresh_db(dialect, f"profile-{provider}")
                targets = self.register(url, provider, self.sizes.requests)
                data = (
                    self.okd_data(targets, "tosign")
                    if provider == OKD
                    else self.firma_data(targets, self.firma_pool_size(seconds + 3))
                )
                server = self.start_signback(f"signback-profile-{provider}-{dialect}", url)
                out = self.run_dir / f"profile-intake-{provider}-{dialect}.txt"
                spy: list[Proc] = []

                def attach(
                    _pid: int, pid: int = server.proc.pid, out: Path = out, spy: list[Proc] = spy
                ) -> None:
                    spy.append(profile.start(self.procs, binary, pid, out, duration_s=seconds))

                self.wrk(
                    server.url,
                    data,
                    seconds + 2,
                    label=f"{name} (profiled)",
                    server_pid=server.proc.pid,
                    on_start=attach,
                )
                for proc in spy:
                    with_timeout_wait(proc, seconds + 15)
                    self.procs.stop(proc)
                self.kill9(server)
                self.profiles.append(profile.summarize(name, out, seconds=seconds, rate=200))
        finally:
            self.drop_postgres()
        # End to end: intake, pipeline and outbox in the one process (a shorter burst: only
        # its first seconds are sampled).
        total, n = min(self.sizes.e2e_callbacks, 5_000), self.sizes.e2e_requests
        url = self.fresh_sqlite("profile-e2e")
        targets = self.register(url, OKD, n)
        self.say("profile: end to end")
        fake = self.start_fake(targets)
        server = self.start_signback("signback-profile-e2e", url, fake_url=fake)
        out = self.run_dir / "profile-e2e.txt"
        try:
            self.e2e_sustained(server, self.okd_data(targets, "tostamp"), total, profile_to=out)
        finally:
            self.procs.stop(server.proc)
            self.stop_fakes()
        self.profiles.append(
            profile.summarize(
                f"End to end · SQLite (first {seconds} s of a {total:,}-callback burst)",
                out,
                seconds=seconds,
                rate=200,
            )
        )


def answers_invalid(result: WrkResult) -> str | None:
    """Why a load run's figures say nothing about the intake (None: they do): more than 1 %
    of the answers were not 2xx, or nothing was accepted."""
    if result.accepted == 0:
        return "(invalid: no callback was accepted)"
    if result.other > 0.01 * max(result.requests, 1):
        return f"(invalid: {result.other:,} of {result.requests:,} answers were not 2xx)"
    return None


def first_invalid(*runs: IntakeRun) -> str | None:
    """Why a row built from these runs says nothing (the first reason found), or None."""
    return next((run.invalid for run in runs if run.invalid is not None), None)


def bracketed(before: WrkResult, after: WrkResult) -> WrkResult:
    """Two runs of the same load as one: their requests over their time, latencies averaged."""
    return replace(
        before,
        requests=before.requests + after.requests,
        duration_s=before.duration_s + after.duration_s,
        latency_ms={
            key: (value + after.latency_ms.get(key, value)) / 2
            for key, value in before.latency_ms.items()
        },
    )


def with_timeout_wait(proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.2)


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    ordered = sorted(values)
    return float(statistics.quantiles(ordered, n=1000, method="inclusive")[int(pct * 10) - 1])


def patch_times(calls: list[dict[str, Any]]) -> dict[int, tuple[float, int | None]]:
    """seq → (arrival time, status) of the emulator's PATCHes carrying a bench result URL."""
    found: dict[int, tuple[float, int | None]] = {}
    for call in calls:
        if call.get("method") != "PATCH" or not isinstance(call.get("body"), dict):
            continue
        result_url = call["body"].get("resulturl")
        seq = seq_of(result_url) if isinstance(result_url, str) else None
        if seq is not None and seq not in found:
            found[seq] = (float(call["time"]), call.get("status"))
    return found
