"""Shared by scripts/run.py and scripts/test.py: make ./.venv and install signback into it.

Only the standard library is used here, so the scripts work on a machine that has nothing
but Python 3.11+. The install is redone only when pyproject.toml changed since the last one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def ensure_python() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"signback needs Python 3.11 or newer; this is {sys.version.split()[0]}.")


def ensure_venv(extras: str = "") -> Path:
    """Create .venv if needed and install the project (with ``extras``) when it changed."""
    ensure_python()
    if not PYTHON.exists():
        print("Creating .venv …", flush=True)
        venv.EnvBuilder(with_pip=True, upgrade_deps=False).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    stamp = VENV / f".installed{'-' + extras if extras else ''}"
    if not stamp.exists() or stamp.read_text() != digest:
        target = f".[{extras}]" if extras else "."
        print(f"Installing signback{'[' + extras + ']' if extras else ''} into .venv …", flush=True)
        subprocess.run(
            [
                str(PYTHON),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-e",
                target,
            ],
            cwd=ROOT,
            check=True,
        )
        stamp.write_text(digest)
    return BIN
