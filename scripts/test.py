"""The whole test suite: ``python3 scripts/test.py`` (what .ci/run runs, exactly).

Installs the dev dependencies into .venv, then runs ruff, ``mypy --strict`` and pytest.
PostgreSQL tests use SIGNBACK_TEST_POSTGRES_URL or the local server; they are skipped when
it cannot be reached, except under CI=true, where that is a failure. Extra arguments go to
pytest (``python3 scripts/test.py -k firma -x``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bootstrap import ROOT, ensure_venv

CODE = ["receiver", "handlers", "tests", "bench", "scripts"]


def step(title: str, command: list[str]) -> None:
    print(f"\n=== {title}: {' '.join(command)}", flush=True)
    result = subprocess.run(command, cwd=ROOT, check=False)
    if result.returncode != 0:
        print(f"\n*** {title} failed (exit {result.returncode})", flush=True)
        sys.exit(result.returncode)


def main() -> None:
    bin_dir = ensure_venv("dev")
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    step("ruff check", [str(bin_dir / "ruff"), "check", *CODE])
    step("ruff format", [str(bin_dir / "ruff"), "format", "--check", *CODE])
    step("mypy --strict", [str(bin_dir / "mypy"), "--strict"])  # what: pyproject.toml
    step("pytest", [str(bin_dir / "pytest"), *sys.argv[1:]])


if __name__ == "__main__":
    main()
