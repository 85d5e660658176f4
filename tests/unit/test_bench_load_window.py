"""The bench measures CPU from the moment wrk's load threads start, not from its launch
(wrk reads its data file first, which for a large Firma pool takes seconds)."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.load import wait_for_load

# A stand-in for wrk: "loads its data" for a while, then starts one thread.
LOADS_THEN_STARTS_A_THREAD = """
import threading, time
time.sleep(0.6)
threading.Thread(target=time.sleep, args=(5,)).start()
time.sleep(5)
"""


def test_waits_for_the_load_thread_not_the_launch() -> None:
    proc = subprocess.Popen([sys.executable, "-c", LOADS_THEN_STARTS_A_THREAD])
    try:
        launched = time.monotonic()
        assert wait_for_load(proc.pid, threads=1, timeout=20)
        assert time.monotonic() - launched >= 0.5
    finally:
        proc.kill()
        proc.wait()


def test_gives_up_when_the_process_ends_without_starting_threads() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        started = time.monotonic()
        assert not wait_for_load(proc.pid, threads=1, timeout=20)
        assert time.monotonic() - started < 10
    finally:
        proc.wait()


def test_gives_up_after_the_timeout() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not wait_for_load(proc.pid, threads=1, timeout=0.3)
    finally:
        proc.kill()
        proc.wait()
