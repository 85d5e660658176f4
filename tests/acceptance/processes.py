"""Real processes for acceptance tests: ``signback serve``/``worker`` and the emulators.

Each runs as ``python -m receiver.cli …`` from the project root, with its own environment,
its output in a log file under the test's tmp_path (shown when a test fails).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import ADMIN_TOKEN, SECRET_KEY

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    """A port that was free a moment ago (the child binds it; loopback races are rare)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def signback_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNBACK_")}
    env.pop("DATABASE_URL", None)
    env.update(
        {
            "SIGNBACK_DATABASE_URL": database_url,
            "SIGNBACK_ADMIN_TOKEN": ADMIN_TOKEN,
            "SIGNBACK_SECRET_KEY": SECRET_KEY,
            "SIGNBACK_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "SIGNBACK_LOG_FORMAT": "json",
            "SIGNBACK_POLL_INTERVAL": "0.2",
            "SIGNBACK_RETRY_BASE_DELAY": "0.2",
            "SIGNBACK_RETRY_MAX_DELAY": "2",
            # Off unless a test is about the archive (it passes its own directory).
            "SIGNBACK_ARCHIVE_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@dataclass
class Process:
    name: str
    args: list[str]
    env: Mapping[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self) -> Process:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n----- start #{self.starts}: {' '.join(self.args)}\n".encode())
        log.flush()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", *self.args],
            cwd=ROOT,
            env=dict(self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.log()}"
                )
            try:
                if httpx.get(url, timeout=1.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not answer {url} in {timeout} s:\n{self.log()}")

    def kill9(self) -> None:
        assert self.popen is not None
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout} s") from None

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with suppress(AssertionError):
                self.terminate(timeout=40.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@contextmanager
def processes(tmp_path: Path) -> Iterator[list[Process]]:
    """Collects started processes and always stops them (printing their logs on failure)."""
    started: list[Process] = []
    try:
        yield started
    except BaseException:
        for process in started:
            print(f"===== log of {process.name} =====\n{process.log()}", file=sys.stderr)
        raise
    finally:
        for process in reversed(started):
            process.stop()


def fake_okdokument(tmp_path: Path, port: int, time_factor: float = 1.0) -> Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNBACK_")}
    return Process(
        "fake-okdokument",
        ["fake", "okdokument", "--port", str(port), "--time-factor", str(time_factor)],
        env,
        tmp_path / "fake-okdokument.log",
    )


def signback(tmp_path: Path, name: str, args: list[str], env: Mapping[str, str]) -> Process:
    return Process(name, args, env, tmp_path / f"{name}.log")


def sent_firma_request(api: httpx.Client, admin: httpx.Client, name: str) -> tuple[str, int]:
    """A one-signer signing request created at the Firma emulator (``api``), registered
    with signback (``admin``) and sent: its Firma id and signback's id."""
    created = api.post(
        "/signing-requests",
        json={
            "name": name,
            "document": "JVBERi0xLjQKJSVFT0YK",
            "recipients": [{"first_name": "Alice", "email": "alice@example.com"}],
        },
    ).json()
    sr_id = str(created["id"])
    registered = admin.post(
        "/api/requests", json={"provider": "firma", "signing_request_id": sr_id}
    )
    assert registered.status_code == 201, registered.text
    assert api.post(f"/signing-requests/{sr_id}/send").status_code == 200
    return sr_id, int(registered.json()["id"])
