"""The lock files scripts/bootstrap.py installs from agree with pyproject.toml.

A dependency added to pyproject.toml without ``python3 scripts/lock.py`` would be missing
from a fresh install; these catch that before a fresh clone does.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bootstrap  # noqa: E402

PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", re.MULTILINE)


def pins(lock: Path) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(lock.read_text())}


def project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("extras", list(bootstrap.LOCKS))
def test_each_lock_pins_every_dependency_within_its_bounds(extras: str) -> None:
    meta = project()
    wanted = [Requirement(r) for r in meta["dependencies"]]  # type: ignore[attr-defined]
    if extras:
        optional = meta["optional-dependencies"][extras]  # type: ignore[index]
        wanted += [Requirement(r) for r in optional]
    locked = pins(bootstrap.LOCKS[extras])
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in {bootstrap.LOCKS[extras].name}: lock again"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{name}=={locked[name]} is outside {requirement.specifier}: lock again"
        )
    assert "setuptools" in locked  # the editable install builds without fetching anything


@pytest.mark.parametrize("extras", list(bootstrap.LOCKS))
def test_every_locked_package_has_hashes(extras: str) -> None:
    text = bootstrap.LOCKS[extras].read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert entries
    for entry in entries:
        assert "--hash=sha256:" in entry, entry


def test_the_install_is_redone_when_the_lock_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lock = tmp_path / "runtime.txt"
    lock.write_text("a==1 --hash=sha256:00\n")
    monkeypatch.setitem(bootstrap.LOCKS, "", lock)
    before = bootstrap.install_stamp("")
    lock.write_text("a==2 --hash=sha256:00\n")
    assert bootstrap.install_stamp("") != before
    assert bootstrap.install_stamp("") == bootstrap.install_stamp("")
