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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.procs import CLOCK_TICKS, Procs, process_ticks, python_env
from bench.stores import _scalar

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
    _t0: float = 0.0

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
                self.samples.append(Sample(round(now - self._t0, 2), backlog, round(cpu, 2)))
        finally:
            if pg is not None:
                pg.close()

    def __enter__(self) -> BacklogSampler:
        self._t0 = time.monotonic()
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
) -> str:
    """A line chart as SVG text: one polyline per series, axes with five ticks, a legend."""
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
    for n, (label, points) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        ly = top + 14 + 16 * n
        out.append(
            f'<line x1="{left + 12}" y1="{ly - 4}" x2="{left + 32}" y2="{ly - 4}"'
            f' stroke="{colour}" stroke-width="2"/>'
            f'<text x="{left + 38}" y="{ly}">{_esc(label)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
