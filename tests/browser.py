"""The system Chromium for the console's browser tests, driven by Playwright.

No browser is downloaded: Playwright starts Debian's ``chromium`` (``/usr/bin/chromium``,
or SIGNBACK_TEST_CHROMIUM), with the flags a closed network and a container need. Missing,
the tests FAIL (they never skip): ``.ci/run`` (scripts/test.py) installs it when it is
missing, and under CI=true the whole run stops at once (tests/conftest.py).
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM_ARGS = [
    "--no-sandbox",  # containers and CI runners run as root, without user namespaces
    "--disable-background-networking",  # no calls home on a closed network
    "--disable-component-update",
    "--disable-dev-shm-usage",  # a small /dev/shm in containers
]


def chromium_path() -> Path:
    return Path(os.environ.get("SIGNBACK_TEST_CHROMIUM", "/usr/bin/chromium"))


def missing_chromium() -> str | None:
    """Why the browser tests cannot run, or None."""
    path = chromium_path()
    if not path.exists():
        return (
            f"Chromium is missing at {path}: install Debian's chromium package"
            " (apt-get install chromium; python3 scripts/test.py does it when run as root)"
            " or point SIGNBACK_TEST_CHROMIUM at a Chromium binary."
        )
    return None
