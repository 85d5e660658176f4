"""Quick start: ``python3 scripts/run.py`` — installs what is needed and serves on SQLite.

On first use it also writes a ``.env`` with a fresh admin token and secret key (printed once,
kept in that file, which git ignores). Arguments are passed to ``signback serve``, e.g.
``python3 scripts/run.py --port 9000 --public-url https://abc.ngrok.app``.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bootstrap import ROOT, ensure_venv

ENV_FILE = ROOT / ".env"


def ensure_env_file() -> None:
    if ENV_FILE.exists():
        return
    admin_token = secrets.token_urlsafe(24)
    ENV_FILE.write_text(
        "# Written by scripts/run.py for local use. Production: set these in the environment.\n"
        f"SIGNBACK_ADMIN_TOKEN={admin_token}\n"
        f"SIGNBACK_SECRET_KEY={secrets.token_urlsafe(48)}\n"
        "SIGNBACK_DATABASE_URL=sqlite:///./signback.db\n"
        "# SIGNBACK_PUBLIC_URL=https://<your tunnel or domain>   (default: this host and port)\n"
        "# SIGNBACK_OKDOKUMENT_API_KEY=\n"
        "# SIGNBACK_FIRMA_API_KEY=\n"
        "# SIGNBACK_FIRMA_WEBHOOK_SECRETS=\n",
        encoding="utf-8",
    )
    os.chmod(ENV_FILE, 0o600)
    print(f"Wrote {ENV_FILE.name} with a fresh admin token (for /api and the CLI):")
    print(f"    {admin_token}")


def main() -> None:
    bin_dir = ensure_venv()
    ensure_env_file()
    os.chdir(ROOT)
    signback = str(bin_dir / "signback")
    os.execv(signback, [signback, "serve", *sys.argv[1:]])


if __name__ == "__main__":
    main()
