"""The results table, the machine's description, and docs/performance.md."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import re
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import ROOT
from bench.profile import ProfileSummary, render

ANALYSIS_START = "<!-- analysis:start -->"
ANALYSIS_END = "<!-- analysis:end -->"


@dataclass(frozen=True)
class Row:
    scenario: str
    metric: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""  # "ok", "MISS …", or "" when the row has no target


def check(ok: bool, miss: str = "") -> str:
    return "ok" if ok else f"MISS{' ' + miss if miss else ''}"


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def fmt_mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| scenario | metric | signback | baseline | ratio | target | result |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.metric} | {r.value} | {r.baseline} | {r.ratio} | {r.target} "
            f"| {r.verdict} |"
        )
    return lines


def plain_table(rows: Sequence[Row]) -> str:
    """The same table for a terminal: aligned columns, no markdown."""
    header = ("scenario", "metric", "signback", "baseline", "ratio", "target", "result")
    cells = [header] + [
        (r.scenario, r.metric, r.value, r.baseline, r.ratio, r.target, r.verdict) for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    out = []
    for n, c in enumerate(cells):
        out.append("  ".join(c[i].ljust(widths[i]) for i in range(len(header))).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# --- the machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def machine(*, postgres: str | None, wrk: str) -> list[tuple[str, str]]:
    return [
        ("CPU", f"{_cpu_model()}, {os.cpu_count()} cores"),
        ("memory", _memory()),
        ("OS", platform.platform()),
        ("Python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("SQLite", sqlite3.sqlite_version),
        ("PostgreSQL", postgres or "not reachable (PostgreSQL rows skipped)"),
        ("load generator", wrk),
        (
            "server stack",
            f"uvicorn {_version('uvicorn')}, starlette {_version('starlette')}, "
            f"uvloop {_version('uvloop')}, httptools {_version('httptools')}",
        ),
        ("signback", f"{_version('signback')} at commit {_git_commit()}"),
    ]


# --- docs/performance.md ---------------------------------------------------------------------


def preserved_analysis(path: Path) -> str | None:
    """The hand-written analysis section of an earlier performance.md, kept across runs."""
    if not path.exists():
        return None
    match = re.search(
        re.escape(ANALYSIS_START) + r".*?" + re.escape(ANALYSIS_END), path.read_text(), re.S
    )
    return match.group(0) if match else None


def write_markdown(
    path: Path,
    *,
    command: str,
    started: dt.datetime,
    elapsed_s: float,
    machine_facts: Sequence[tuple[str, str]],
    rows: Sequence[Row],
    notes: Sequence[str],
    cpu: Sequence[str],
    profiles: Sequence[ProfileSummary],
    run_dir: Path,
) -> None:
    analysis = preserved_analysis(path) or (
        f"{ANALYSIS_START}\n_No analysis written yet._\n{ANALYSIS_END}"
    )
    lines = [
        "# Performance",
        "",
        "Measured by `python -m bench` (see `bench/README.md`): everything runs on loopback on",
        "one machine, load from `wrk` in a separate process, each scenario next to its baseline",
        "in the same run. This file is rewritten by every full run, except the analysis section.",
        "",
        f"Run: `{command}` on {started:%Y-%m-%d %H:%M} UTC, {elapsed_s / 60:.0f} minutes.",
        "",
        "## Machine",
        "",
        *[f"- **{name}**: {value}" for name, value in machine_facts],
        "",
        "## Results",
        "",
        *table(rows),
        "",
        "## Notes from the run",
        "",
        *[f"- {note}" for note in notes],
        "",
        "CPU used during each wrk run, in cores (the machine has "
        f'{os.cpu_count()}); "other processes" is load the bench did not start (other jobs on '
        "the machine), which the bench waits to settle below 0.3 cores before each run:",
        "",
        *[f"- {line}" for line in cpu],
        "",
        "## Analysis",
        "",
        analysis,
        "",
        "## Profiles",
        "",
        "py-spy samples of the serving process (200 Hz) in separate runs of the same",
        "scenarios, so that the figures above are not taken under a profiler. Shares are of the",
        "samples in which the process was on the CPU. Raw stacks: "
        f"`{run_dir}/profile-*.txt` (kept with `--keep`).",
        "",
    ]
    for summary in profiles:
        lines.extend(render(summary))
    if not profiles:
        lines.extend(["_No profiles in this run._", ""])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
