"""Steady load: callbacks at a paced rate (bench/pacer.py), the backlog sampled over time.

The intake scenarios flood the server (wrk is closed-loop); here callbacks come at a rate
the server can take, and what is watched is the work behind them: does processing keep up
(the backlog of unprocessed callbacks stays bounded) or does it fall behind. The samples go
into the report's table and into a small chart (an SVG written here, no plotting library).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from bench.procs import CLOCK_TICKS, Procs, process_ticks, python_env
from bench.stores import _scalar

if TYPE_CHECKING:
    from bench.scenarios import Bench

RESULT_PREFIX = "PACER_RESULT "
SAMPLE_EVERY = 0.5  # seconds

BACKLOG_SQL = "SELECT COUNT(*) FROM inbox WHERE status IN ('pending', 'processing')"


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load began
    backlog: int  # callbacks stored and not yet processed
    cpu: float  # cores the watched processes used since the previous sample


@dataclass
class BacklogSampler:
    """Samples the backlog and the CPU of ``pids`` every SAMPLE_EVERY seconds (a thread)."""

    db_url: str
    pids: Sequence[int]
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    started: float = 0.0  # time.monotonic() when sampling began

    def _count(self, pg: psycopg.Connection[Any] | None) -> int:
        if pg is not None:
            row = pg.execute(BACKLOG_SQL).fetchone()
            return int(row[0]) if row else 0
        return _scalar(self.db_url, BACKLOG_SQL)

    def _ticks(self) -> int:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(OSError, ValueError):
                total += process_ticks(pid)
        return total

    def _run(self) -> None:
        pg = None
        if not self.db_url.startswith("sqlite"):
            pg = psycopg.connect(self.db_url, autocommit=True)
        try:
            ticks, at = self._ticks(), time.monotonic()
            while not self._stop.wait(SAMPLE_EVERY):
                now_ticks, now = self._ticks(), time.monotonic()
                cpu = (now_ticks - ticks) / CLOCK_TICKS / max(now - at, 1e-6)
                ticks, at = now_ticks, now
                backlog = self._count(pg)
                self.samples.append(Sample(round(now - self.started, 2), backlog, round(cpu, 2)))
        finally:
            if pg is not None:
                pg.close()

    def __enter__(self) -> BacklogSampler:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="backlog-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def backlog_at(self, t: float) -> int:
        """The last sample at or before ``t`` seconds (0 before the first)."""
        found = 0
        for sample in self.samples:
            if sample.t > t:
                break
            found = sample.backlog
        return found


def run_pacer(
    procs: Procs,
    url: str,
    data: Path,
    *,
    rate: float,
    seconds: float,
    seq_base: int,
    name: str = "pacer",
) -> dict[str, Any]:
    """bench/pacer.py in a process of its own; its result line as a dict."""
    proc = procs.python(
        name,
        [
            "-m",
            "bench.pacer",
            "--url",
            url,
            "--data",
            str(data),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--seq-base",
            str(seq_base),
        ],
        python_env(),
    )
    try:
        proc.popen.wait(seconds + 120)
    finally:
        procs.stop(proc)
    for line in reversed(proc.log_path.read_text(errors="replace").splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line.removeprefix(RESULT_PREFIX))
            return result
    raise RuntimeError(f"the pacer printed no result; see {proc.log_path}")


# --- the chart -------------------------------------------------------------------------------

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (an axis end)."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 <= value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale


def svg_chart(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 720,
    height: int = 360,
    mark_x: float | None = None,
    dashed: Sequence[bool] = (),
    colours: Sequence[int] = (),
) -> str:
    """A line chart as SVG text: one polyline per series, axes with five ticks, a legend;
    ``mark_x``: a dotted vertical line there (the load's end); ``dashed``: which series are
    drawn dashed (say, the code before a change); ``colours``: each series' colour (an index),
    so that one run before and after a change can share one."""
    left, right, top, bottom = 70, 20, 40, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for _, points in series for x, _ in points] or [1.0]
    ys = [y for _, points in series for _, y in points] or [1.0]
    x_max, y_max = _nice_max(max(xs)), _nice_max(max(ys))

    def px(x: float) -> float:
        return left + plot_w * x / x_max

    def py(y: float) -> float:
        return top + plot_h * (1 - y / y_max)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{_esc(title)}</text>',
    ]
    for i in range(6):
        y = y_max * i / 5
        out.append(
            f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + plot_w}" y2="{py(y):.1f}"'
            ' stroke="#ddd"/>'
        )
        out.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:,.0f}</text>')
        x = x_max * i / 5
        out.append(
            f'<text x="{px(x):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{x:,.0f}</text>'
        )
    out.append(
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>'
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"'
        ' stroke="black"/>'
    )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">'
        f"{_esc(x_label)}</text>"
    )
    out.append(
        f'<text x="16" y="{top + plot_h / 2}" text-anchor="middle"'
        f' transform="rotate(-90 16 {top + plot_h / 2})">{_esc(y_label)}</text>'
    )
    if mark_x is not None:
        out.append(
            f'<line x1="{px(mark_x):.1f}" y1="{top}" x2="{px(mark_x):.1f}" y2="{top + plot_h}"'
            ' stroke="#888" stroke-dasharray="2,3"/>'
        )
    for n, (label, points) in enumerate(series):
        colour = COLOURS[(colours[n] if n < len(colours) else n) % len(COLOURS)]
        dash = ' stroke-dasharray="6,4"' if n < len(dashed) and dashed[n] else ""
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        ly = top + 14 + 16 * n
        out.append(
            f'<line x1="{left + 12}" y1="{ly - 4}" x2="{left + 32}" y2="{ly - 4}"'
            f' stroke="{colour}" stroke-width="2"{dash}/>'
            f'<text x="{left + 38}" y="{ly}">{_esc(label)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- the scenario ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PacedRun:
    label: str
    rate: float
    seconds: float
    result: dict[str, Any]
    samples: list[Sample]
    drain_s: float | None  # from the end of the load until the backlog was 0 (None: never)
    held_s: float | None = None  # the governor's pauses (None: not reported by this code)

    def backlog_at(self, t: float) -> int:
        found = 0
        for sample in self.samples:
            if sample.t > t:
                break
            found = sample.backlog
        return found

    @property
    def peak(self) -> int:
        return max((s.backlog for s in self.samples if s.t <= self.seconds), default=0)

    @property
    def processed_rate(self) -> float:
        """Events processed per second during the load: what came in less what was left."""
        answered = int(self.result["n2xx"])
        return max(0.0, answered - self.backlog_at(self.seconds)) / self.seconds

    def bounded(self) -> bool:
        """Processing kept up: the backlog at the end of the load is no more than a second
        of callbacks, and it did not grow from the middle of the run to its end."""
        end = self.backlog_at(self.seconds)
        middle = self.backlog_at(self.seconds / 2)
        return end <= self.rate and end <= max(middle * 1.5, self.rate / 4)

    def cpu_per_event_us(self) -> float:
        busy = sum(s.cpu * SAMPLE_EVERY for s in self.samples)
        return busy / max(int(self.result["n2xx"]), 1) * 1e6


def paced_run(
    bench: Bench,
    server_url: str,
    db_url: str,
    pids: Sequence[int],
    data: Path,
    *,
    label: str,
    rate: float,
    seconds: float,
    drain_timeout: float = 120.0,
) -> PacedRun:
    """Callbacks at ``rate`` for ``seconds``, then wait for the backlog to drain."""
    bench.say(f"{label}: {rate:,.0f} callbacks/s for {seconds:.0f} s")
    with BacklogSampler(db_url, pids) as sampler:
        result = run_pacer(
            bench.procs,
            server_url,
            data,
            rate=rate,
            seconds=seconds,
            seq_base=bench.next_seq_base(),
        )
        ended = time.monotonic() - sampler.started
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline:
            last = sampler.samples[-1] if sampler.samples else None
            if last is not None and last.t > ended and last.backlog == 0:
                break
            time.sleep(SAMPLE_EVERY)
    drained = next((s.t for s in sampler.samples if s.t > ended and s.backlog == 0), None)
    # The pacer's clock starts a moment after the sampler's: time is counted from the
    # sampler's start, so the load's end is where the pacer's seconds end.
    return PacedRun(
        label,
        rate,
        seconds,
        result,
        list(sampler.samples),
        None if drained is None else round(drained - ended, 1),
    )


def scenario(bench: Bench) -> None:
    """Half the intake's capacity (Firma, worker on, measured in this run), paced, on each
    database; on PostgreSQL also 2,000/s, the rate at which processing had fallen furthest
    behind. The backlog over time goes into a chart next to the report."""
    dialects = ["sqlite"] + (["postgresql"] if bench.config.postgres_version else [])
    if len(dialects) == 1:
        bench.notes.append("Sustained load on PostgreSQL skipped: no server (--postgres-url).")
    runs: list[PacedRun] = []
    try:
        for dialect in dialects:
            capacity = bench.rates.get(f"firma-{dialect}") or measure_capacity(bench, dialect)
            rates = [capacity / 2]
            if dialect == "postgresql":
                rates.append(2000.0)
            for rate in rates:
                runs.append(one_run(bench, dialect, rate, capacity))
    finally:
        bench.drop_postgres()
    for run in runs:
        report_rows(bench, run)
    if runs and bench.config.chart_path is not None:
        chart = svg_chart(
            [(f"{r.label}, {r.rate:,.0f}/s", [(s.t, s.backlog) for s in r.samples]) for r in runs],
            title="Backlog under a steady load (callbacks stored, not yet processed)",
            x_label=f"seconds since the load began (it ends at {bench.sizes.sustained_s:.0f} s)",
            y_label="backlog (callbacks)",
            mark_x=bench.sizes.sustained_s,
        )
        bench.config.chart_path.write_text(chart)
        # The samples themselves, to plot or compare elsewhere.
        bench.config.chart_path.with_suffix(".json").write_text(
            json.dumps(
                [
                    {
                        "label": r.label,
                        "rate": r.rate,
                        "seconds": r.seconds,
                        "samples": [[s.t, s.backlog, s.cpu] for s in r.samples],
                    }
                    for r in runs
                ]
            )
        )
        bench.notes.append(
            f"Sustained load, backlog over time: ![backlog]({bench.config.chart_path.name})"
        )


def measure_capacity(bench: Bench, dialect: str) -> float:
    """The Firma intake's requests/s under wrk with the worker on (a short run)."""
    from bench.scenarios import FIRMA

    url = bench.fresh_db(dialect, "capacity")
    targets = bench.register(url, FIRMA, bench.sizes.requests)
    server = bench.start_signback(f"signback-capacity-{dialect}", url)
    seconds = min(bench.sizes.intake_s, 10.0)
    run = bench.intake_once(
        server,
        FIRMA,
        lambda: bench.firma_data(targets, bench.firma_pool_size(seconds)),
        seconds,
        label=f"Sustained load: the Firma intake's capacity on {dialect}",
    )
    bench.rates[f"firma-{dialect}"] = run.result.rps
    return float(run.result.rps)


def one_run(bench: Bench, dialect: str, rate: float, capacity: float) -> PacedRun:
    from bench.scenarios import DB_NAME, FIRMA

    seconds = bench.sizes.sustained_s
    url = bench.fresh_db(dialect, f"sustained-{int(rate)}")
    targets = bench.register(url, FIRMA, bench.sizes.requests)
    server = bench.start_signback(f"signback-sustained-{dialect}", url)
    try:
        data = bench.firma_data(targets, int(rate * seconds) + 100)
        share = f" (half of {capacity:,.0f}/s)" if abs(rate - capacity / 2) < 1 else ""
        run = paced_run(
            bench,
            server.url,
            url,
            [server.proc.pid],
            data,
            label=f"Sustained load · {DB_NAME[dialect]}{share}",
            rate=rate,
            seconds=seconds,
        )
        return replace(run, held_s=held_seconds(server.url, bench.admin_token))
    finally:
        bench.procs.stop(server.proc)


def held_seconds(url: str, admin_token: str) -> float | None:
    """``signback_background_held_seconds_total`` of the server at ``url`` (None when it
    has no such metric: older code)."""
    try:
        text = httpx.get(
            f"{url}/metrics", headers={"authorization": f"Bearer {admin_token}"}, timeout=10
        ).text
    except httpx.HTTPError:
        return None
    if "signback_background_held_seconds_total" not in text:
        return None
    for line in text.splitlines():
        if line.startswith("signback_background_held_seconds_total "):
            return float(line.split()[1])
    return 0.0


def report_rows(bench: Bench, run: PacedRun) -> None:
    from bench.report import Row, check, fmt_int, fmt_ms

    scenario_name = f"{run.label} · {run.rate:,.0f} callbacks/s"
    sent, answered = run.result["sent"], run.result["n2xx"]
    latency = run.result["latency_ms"]
    bench.rows.append(
        Row(
            scenario_name,
            "events processed/s during the load; backlog peak / at its end",
            f"{fmt_int(run.processed_rate)}; {run.peak:,} / {run.backlog_at(run.seconds):,}",
            "",
            "",
            "keeps up (backlog bounded)",
            check(run.bounded(), f"(falls behind by {run.rate - run.processed_rate:,.0f}/s)"),
        )
    )
    bench.rows.append(
        Row(
            scenario_name,
            "callbacks answered 2xx / sent; latency p50 / p99",
            f"{answered:,} / {sent:,}; {fmt_ms(latency['50'])} / {fmt_ms(latency['99'])}",
        )
    )
    other, errors = run.result.get("other", 0), run.result.get("errors", 0)
    if other or errors or sent != answered:
        bench.notes.append(
            f"{scenario_name}: of {sent:,} callbacks sent, {other:,} were answered with "
            f"another status than 2xx and {errors:,} not answered (the connection failed "
            "or closed first)."
        )
    held = "" if run.held_s is None else f"; governor held the work back {run.held_s:.1f} s"
    bench.rows.append(
        Row(
            scenario_name,
            "drained after the load; CPU per event (signback, all of it)"
            + ("" if run.held_s is None else "; held back"),
            ("never (2 min)" if run.drain_s is None else f"{run.drain_s:.1f} s")
            + f"; {run.cpu_per_event_us():,.0f} µs{held}",
        )
    )


def combine(out: Path, sources: Sequence[tuple[Path, str]], *, title: str) -> None:
    """One chart from the samples of several runs (the JSON the scenario writes next to its
    chart), each file's series labelled with its own prefix; the first file's drawn solid,
    the others dashed (``python -m bench.sustained OUT.svg new.json:after old.json:before``)."""
    series: list[tuple[str, Sequence[tuple[float, float]]]] = []
    dashed: list[bool] = []
    colours: list[int] = []
    seconds = 0.0
    for n, (path, prefix) in enumerate(sources):
        for k, run in enumerate(json.loads(path.read_text())):
            colours.append(k)
            seconds = max(seconds, float(run["seconds"]))
            label = f"{prefix}: {run['label'].removeprefix('Sustained load · ')}"
            points = [(t, backlog) for t, backlog, _ in run["samples"]]
            series.append((f"{label}, {run['rate']:,.0f}/s", points))
            dashed.append(n > 0)
    out.write_text(
        svg_chart(
            series,
            title=title,
            x_label=f"seconds since the load began (it ends at {seconds:.0f} s)",
            y_label="backlog (callbacks)",
            mark_x=seconds,
            dashed=dashed,
            colours=colours,
            height=440,
        )
    )


if __name__ == "__main__":
    import sys

    pairs = [arg.rpartition(":") for arg in sys.argv[2:]]
    combine(
        Path(sys.argv[1]),
        [(Path(path), label) for path, _, label in pairs],
        title="Backlog under a steady load (callbacks stored, not yet processed)",
    )
