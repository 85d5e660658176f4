"""scripts/bootstrap.py: what it cleans up before installing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "scripts"))
import bootstrap


def test_a_stale_egg_info_in_the_checkout_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older install left signback.egg-info beside pyproject.toml, without the provider
    entry points; found first on sys.path, it hid the installed metadata."""
    stale = tmp_path / "signback.egg-info"
    stale.mkdir()
    (stale / "entry_points.txt").write_text("[console_scripts]\nsignback = receiver.cli:main\n")
    monkeypatch.setattr(bootstrap, "ROOT", tmp_path)
    bootstrap.remove_stale_metadata()
    assert not stale.exists()
    bootstrap.remove_stale_metadata()  # nothing there: nothing to do
