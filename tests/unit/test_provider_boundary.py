"""The core names no provider: every installed provider's name is absent from receiver/
(code, comments and templates alike), so that a provider stays one package."""

from __future__ import annotations

from pathlib import Path

from receiver.providers.registry import discover

CORE = Path(__file__).resolve().parents[2] / "receiver"


def test_the_core_names_no_installed_provider() -> None:
    names = sorted(discover(""))
    assert {"okdokument", "firma"} <= set(names)
    found = [
        f"{path.relative_to(CORE.parent)}: {name}"
        for path in sorted(CORE.rglob("*"))
        if path.is_file() and path.suffix in {".py", ".html", ".js", ".css", ".mako", ".md", ".txt"}
        for name in names
        if name.lower() in path.read_text(encoding="utf-8", errors="replace").lower()
    ]
    assert found == []
