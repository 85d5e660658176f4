"""The whole test suite: ``python3 scripts/test.py`` (what .ci/run runs, exactly).

Installs the dev dependencies into .venv, then runs ruff, ``mypy --strict`` and pytest.
PostgreSQL tests use SIGNBACK_TEST_POSTGRES_URL or the local server; they are skipped when
it cannot be reached, except under CI=true, where that is a failure. The console's browser
tests need Debian's Chromium at /usr/bin/chromium: installed here (apt-get) when it is
missing and this runs as root; missing, those tests fail (under CI=true the run stops).
Extra arguments go to pytest (``python3 scripts/test.py -k firma -x``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bootstrap import ROOT, ensure_venv

CODE = ["receiver", "handlers", "tests", "bench", "scripts"]


def step(title: str, command: list[str], env: dict[str, str] | None = None) -> None:
    print(f"\n=== {title}: {' '.join(command)}", flush=True)
    result = subprocess.run(command, cwd=ROOT, check=False, env=env)
    if result.returncode != 0:
        print(f"\n*** {title} failed (exit {result.returncode})", flush=True)
        sys.exit(result.returncode)


CHROMIUM = Path(os.environ.get("SIGNBACK_TEST_CHROMIUM", "/usr/bin/chromium"))


def ensure_chromium() -> None:
    """The console's browser tests drive the system Chromium (tests/browser.py). When it is
    missing and we are root (a CI runner, a container), install Debian's package; otherwise
    say how, and let those tests fail."""
    if CHROMIUM.exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        print(f"*** {CHROMIUM} is missing: the browser tests will fail (apt-get install chromium)")
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    step("apt-get update", ["apt-get", "update", "-q"], env=env)
    step(
        "install chromium",
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
        env=env,
    )


def main() -> None:
    ensure_chromium()
    bin_dir = ensure_venv("dev")
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    step("ruff check", [str(bin_dir / "ruff"), "check", *CODE])
    step("ruff format", [str(bin_dir / "ruff"), "format", "--check", *CODE])
    step("mypy --strict", [str(bin_dir / "mypy"), "--strict"])  # what: pyproject.toml
    step("pytest", [str(bin_dir / "pytest"), *sys.argv[1:]])


if __name__ == "__main__":
    main()
