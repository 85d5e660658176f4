"""Processes the bench starts: signback, the bare baseline, the emulators, wrk, py-spy.

Every child runs in its own session (its own process group), so the bench can stop exactly
what it started, by process-group id, whatever happens to the bench itself (Ctrl-C, an
exception, SIGTERM). Nothing here listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The bench's environment minus any SIGNBACK_/DATABASE_URL setting, plus ``extra``.

    ``PYTHONPATH`` names the source tree so that ``bench.rules`` and ``bench.baseline`` import
    in the children, which run in a scratch directory (so no ``.env`` there is read).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SIGNBACK_") and k not in ("DATABASE_URL", "PORT", "WEB_CONCURRENCY")
    }
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Until ``url`` answers below 500, the process dies, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}; its log ends:\n"
                    f"{self.log_tail()}"
                )
            with suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1.0).status_code < 500:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout:.0f} s")

    def kill9(self) -> None:
        """``kill -9`` the whole process group (what a crash or an OOM kill looks like)."""
        if self.alive():
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.alive():
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill9()
        # A child may have left grandchildren in its group; they go too.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


@dataclass
class Procs:
    """Starts processes and always stops them, newest first."""

    run_dir: Path
    started: list[Proc] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        stdout: int | None = None,
    ) -> Proc:
        log_path = self.run_dir / f"{name}.log"
        with log_path.open("ab") as log:
            log.write(f"\n----- {' '.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                list(argv),
                cwd=self.run_dir,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log if stdout is None else stdout,
                stderr=log,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self.started.append(proc)
        return proc

    def python(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Proc:
        return self.spawn(name, [sys.executable, *args], env)

    def stop(self, proc: Proc, grace: float = 10.0) -> None:
        proc.stop(grace)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop(grace=5.0)


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM (and SIGHUP) to the bench unwind like Ctrl-C, so every ``finally`` runs."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def rss_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of a process in KiB, from /proc; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    if "VmRSS" not in values:
        return None
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


@dataclass(frozen=True)
class RssSample:
    t: float  # seconds since the sampler started
    rss_kib: int
    hwm_kib: int
    count: int | None  # what ``count`` returned (e.g. callbacks stored so far)


class RssSampler:
    """Samples a process's RSS (and optionally a counter) every ``interval`` seconds."""

    def __init__(
        self, pid: int, interval: float = 0.25, count: Callable[[], int | None] | None = None
    ) -> None:
        self.pid = pid
        self.interval = interval
        self.count = count
        self.samples: list[RssSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            value = rss_kib(self.pid)
            if value is None:
                return
            counted: int | None = None
            if self.count is not None:
                with suppress(Exception):
                    counted = self.count()
            self.samples.append(RssSample(time.monotonic() - started, *value, counted))
            self._stop.wait(self.interval)

    @property
    def peak_kib(self) -> int:
        return max((s.hwm_kib for s in self.samples), default=0)


# --- CPU: other load on the machine ----------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_busy_ticks() -> int:
    """Ticks all CPUs spent busy since boot (everything but idle and iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    return sum(values) - values[3] - values[4]


def stat_fields(stat_file: Path) -> list[str] | None:
    """The fields of a ``/proc/…/stat`` file after the command name, the state first;
    None when the process or thread is gone."""
    try:
        text = stat_file.read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces.
    return text.rsplit(")", 1)[1].split()


def stat_ticks(stat_file: Path, *, children: bool = False) -> int:
    """CPU ticks (utime + stime, and with ``children`` the waited-for children's too) in a
    ``/proc/…/stat`` file; 0 when the process or thread is gone."""
    fields = stat_fields(stat_file)
    if fields is None:
        return 0
    return sum(int(v) for v in fields[11 : 15 if children else 13])


def process_ticks(pid: int) -> int:
    """CPU ticks used by a process and its waited-for children (0 when it is gone)."""
    return stat_ticks(Path(f"/proc/{pid}/stat"), children=True)


def main_thread_ticks(pid: int) -> int:
    """CPU ticks of a process's first thread: in signback and uvicorn, the event loop's."""
    return stat_ticks(Path(f"/proc/{pid}/task/{pid}/stat"))


def postgres_ticks(database_prefix: str = "signback_bench_") -> int:
    """CPU ticks of the PostgreSQL backends serving the bench's own databases (their process
    title names the database), so that they do not pass for other load on the machine."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"postgres:") and database_prefix.encode() in title:
            total += stat_ticks(entry / "stat")
    return total


class CpuMeter:
    """CPU used by given processes, by PostgreSQL, and by everything else, in cores."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.ours = 0.0
        self.others = 0.0
        self.postgres = 0.0
        self.seconds = 0.0
        self.per_pid: dict[int, float] = {}
        # The event loop's thread alone: well under one core while the process waits on
        # something else (the GIL, I/O), at one core when it is the limit.
        self.main_thread: dict[int, float] = {}

    def __enter__(self) -> CpuMeter:
        self.restart()
        return self

    def restart(self) -> None:
        """Measure from now on (e.g. once the load generator has loaded its data)."""
        self._t0 = time.monotonic()
        self._busy0 = cpu_busy_ticks()
        self._pg0 = postgres_ticks()
        self._pid0 = {pid: process_ticks(pid) for pid in self.pids}
        self._main0 = {pid: main_thread_ticks(pid) for pid in self.pids}

    def add(self, pid: int) -> None:
        """Count a process started after the meter (e.g. wrk)."""
        self.pids.append(pid)
        self._pid0[pid] = process_ticks(pid)

    def __exit__(self, *exc: object) -> None:
        seconds = self.seconds = max(time.monotonic() - self._t0, 1e-6)
        busy = (cpu_busy_ticks() - self._busy0) / CLOCK_TICKS / seconds
        for pid in self.pids:
            used = max(0, process_ticks(pid) - self._pid0.get(pid, 0))
            self.per_pid[pid] = used / CLOCK_TICKS / seconds
            main = max(0, main_thread_ticks(pid) - self._main0.get(pid, 0))
            self.main_thread[pid] = main / CLOCK_TICKS / seconds
        self.ours = sum(self.per_pid.values())
        self.postgres = max(0, postgres_ticks() - self._pg0) / CLOCK_TICKS / seconds
        self.others = max(0.0, busy - self.ours - self.postgres)


def others_load(seconds: float = 1.0) -> float:
    """Cores busy over ``seconds`` (call it while none of ours is working)."""
    with CpuMeter([]) as meter:
        time.sleep(seconds)
    return meter.others


def wait_quiet(
    max_wait: float, *, threshold: float = 0.3, say: Callable[[str], None] | None = None
) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``threshold`` cores."""
    deadline = time.monotonic() + max_wait
    load = others_load()
    told = False
    while load > threshold and time.monotonic() < deadline:
        if say is not None and not told:
            say(f"waiting for the machine to quieten (other load {load:.1f} cores)")
            told = True
        time.sleep(2.0)
        load = others_load()
    return load
