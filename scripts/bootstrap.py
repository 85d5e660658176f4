"""Shared by scripts/run.py and scripts/test.py: make ./.venv and install signback into it.

Only the standard library is used here, so the scripts work on a machine that has nothing
but Python 3.11+ and pip. Dependencies come from the lock files in requirements/ (made by
scripts/lock.py), installed with ``--require-hashes``: the same versions everywhere, each
checked against its published hashes. signback itself is then installed in editable mode,
without dependencies and without build isolation (its build backend is in the lock too).
The install is redone only when pyproject.toml or the lock file changed since the last one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
# extras → the lock file that installs them
LOCKS = {
    "": ROOT / "requirements" / "runtime.txt",
    "dev": ROOT / "requirements" / "dev.txt",
}


def ensure_python() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"signback needs Python 3.11 or newer; this is {sys.version.split()[0]}.")


def install_stamp(extras: str) -> str:
    """What the install depends on: it is redone when this changes."""
    parts = [(ROOT / "pyproject.toml").read_bytes(), LOCKS[extras].read_bytes(), extras.encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def pip(*args: str) -> None:
    subprocess.run(
        [str(PYTHON), "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        cwd=ROOT,
        check=True,
    )


def remove_stale_metadata() -> None:
    """Delete a ``signback.egg-info`` left in the checkout by an older install.

    Older installs (``pip install -e .`` with build isolation) wrote it next to
    pyproject.toml, and today's editable install no longer rewrites it. Python finds
    distributions on ``sys.path`` in order, and the checkout comes first for pytest and
    ``python -m``: a stale copy there hides the installed metadata, the provider entry points
    with it, and no provider is found."""
    stale = ROOT / "signback.egg-info"
    if stale.is_dir():
        shutil.rmtree(stale)


def ensure_venv(extras: str = "") -> Path:
    """Create .venv if needed and install the locked set (with ``extras``) when it changed."""
    ensure_python()
    if not PYTHON.exists():
        print("Creating .venv …", flush=True)
        venv.EnvBuilder(with_pip=True, upgrade_deps=False).create(VENV)
    digest = install_stamp(extras)
    stamp = VENV / f".installed{'-' + extras if extras else ''}"
    if not stamp.exists() or stamp.read_text() != digest:
        lock = LOCKS[extras]
        print(
            f"Installing signback{'[' + extras + ']' if extras else ''} into .venv "
            f"from {lock.relative_to(ROOT)} …",
            flush=True,
        )
        pip("install", "--require-hashes", "--requirement", str(lock))
        remove_stale_metadata()
        pip("install", "--no-deps", "--no-build-isolation", "--editable", ".")
        stamp.write_text(digest)
    return BIN
