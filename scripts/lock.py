"""Regenerate the lock files: ``python3 scripts/lock.py`` (after changing dependencies).

scripts/bootstrap.py installs ./.venv from these files only, with ``pip install
--require-hashes``: every package pinned to one version and checked against its published
hashes, on any machine with Python 3.11+ and pip.

- ``requirements/runtime.txt``: what ``scripts/run.py`` installs (pyproject.toml's
  dependencies, plus setuptools to build the editable install without fetching anything
  unpinned);
- ``requirements/dev.txt``: what ``scripts/test.py`` installs (the same, plus the ``dev``
  extra).

They are made by uv (``uv pip compile --universal``), which resolves once for every platform
and Python version signback supports, with markers where they differ. uv comes with the dev
dependencies (run ``python3 scripts/test.py`` once first), or from PATH. Pass
``--upgrade`` to move every package to its newest allowed version; without it, versions
already locked are kept unless pyproject.toml no longer allows them. Run the whole suite
after a change, and raise uvicorn's upper bound in pyproject.toml only for a version tested
(receiver/intake/uvicorn_compat.py checks the protocol's needs at start in any case).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bootstrap import BIN, LOCKS, ROOT

BUILD = ROOT / "requirements" / "build.in"


def find_uv() -> str:
    for candidate in (BIN / "uv", shutil.which("uv")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    sys.exit("uv not found: run python3 scripts/test.py once (it installs uv into .venv).")


def main() -> None:
    uv = find_uv()
    for extras, lock in LOCKS.items():
        command = [
            uv,
            "pip",
            "compile",
            "pyproject.toml",
            str(BUILD.relative_to(ROOT)),
            *(["--extra", extras] if extras else []),
            "--universal",
            "--python-version",
            "3.11",
            "--generate-hashes",
            "--custom-compile-command",
            "python3 scripts/lock.py",
            "--quiet",
            "--output-file",
            str(lock.relative_to(ROOT)),
            *sys.argv[1:],
        ]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
