"""Sampling profiles of the serving process with py-spy, summarized into top costs.

py-spy attaches to a running pid from outside and writes collapsed stacks (``--format
raw``), pausing the target for each sample (exact stacks; the profiled runs are separate
from the measured ones). Time inside a C call (a sqlite3 statement, a socket write) counts
as self time of the Python line that made the call. The summary gives, as a share of the
samples in which the process was busy, the functions where the time is spent themselves
(self) and the lines of signback's own code below which it is spent (inclusive).
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Proc, Procs, python_env

OWN_CODE = ("receiver/", "handlers/")
ENTRY_POINTS = ("receiver/cli.py",)  # under every sample: says nothing
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def find_pyspy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


def start(
    procs: Procs, binary: str, pid: int, out: Path, *, duration_s: int, rate: int = 200
) -> Proc:
    return procs.spawn(
        f"py-spy-{out.stem}",
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(duration_s),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        python_env(),
    )


@dataclass(frozen=True)
class Cost:
    frame: str  # "function (file:line)"
    share: float  # of the busy samples, 0..1


@dataclass(frozen=True)
class ProfileSummary:
    name: str
    samples: int
    seconds: float
    rate: int
    top_self: list[Cost]
    top_own: list[Cost]

    @property
    def busy(self) -> float:
        """Share of wall time the sampled process was on the CPU (not waiting)."""
        expected = self.seconds * self.rate
        return self.samples / expected if expected else 0.0


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" else tail
    return path


def _parse_frame(frame: str) -> tuple[str, str, str]:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), "", ""
    return match["func"], _short(match["file"]), match["line"] or ""


def summarize(name: str, raw: Path, *, seconds: float, rate: int, top: int = 12) -> ProfileSummary:
    self_costs: Counter[str] = Counter()
    own_costs: Counter[str] = Counter()
    total = 0
    if raw.exists():
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_parse_frame(f) for f in stack.split(";")]
            func, file, lineno = frames[-1]
            self_costs[f"{func} ({file}:{lineno})" if lineno else f"{func} ({file})"] += count
            seen: set[str] = set()
            for func, file, lineno in frames:
                if file.startswith(OWN_CODE) and not file.startswith(ENTRY_POINTS):
                    key = f"{func} ({file}:{lineno})"
                    if key not in seen:
                        seen.add(key)
                        own_costs[key] += count
    return ProfileSummary(
        name=name,
        samples=total,
        seconds=seconds,
        rate=rate,
        top_self=[Cost(k, v / total) for k, v in self_costs.most_common(top)] if total else [],
        top_own=[Cost(k, v / total) for k, v in own_costs.most_common(top)] if total else [],
    )


def render(summary: ProfileSummary) -> list[str]:
    lines = [
        f"#### {summary.name}",
        "",
        f"{summary.samples} samples over {summary.seconds:.0f} s at {summary.rate} Hz "
        f"(on CPU {summary.busy:.0%} of the time).",
        "",
        "| self (where the CPU time is spent) | share | signback code it is spent under | share |",
        "| --- | ---: | --- | ---: |",
    ]
    for i in range(max(len(summary.top_self), len(summary.top_own))):
        left = summary.top_self[i] if i < len(summary.top_self) else None
        right = summary.top_own[i] if i < len(summary.top_own) else None
        lines.append(
            "| "
            + (f"`{left.frame}` | {left.share:.1%}" if left else " | ")
            + " | "
            + (f"`{right.frame}` | {right.share:.1%}" if right else " | ")
            + " |"
        )
    lines.append("")
    return lines
