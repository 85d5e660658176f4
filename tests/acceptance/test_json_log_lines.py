"""Under ``SIGNBACK_LOG_FORMAT=json`` every line `signback serve` writes is a JSON object,
uvicorn's own lines (start, shutdown) included: a log collector that parses JSON lines must
never meet a plain-text one."""

from __future__ import annotations

import json
from pathlib import Path

from tests.acceptance.processes import Process, free_port, processes, signback_env


def test_every_line_of_a_served_run_is_json(tmp_path: Path) -> None:
    port = free_port()
    env = signback_env(f"sqlite:///{tmp_path / 'signback.db'}", port)
    with processes(tmp_path) as started:
        serve = Process("serve", ["serve", "--port", str(port)], env, tmp_path / "serve.log")
        started.append(serve.start())
        serve.wait_http(f"http://127.0.0.1:{port}/readyz")
        serve.terminate()  # uvicorn ends by raising SIGTERM again: its exit code says so

    text = serve.log_path.read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("----- start")]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"a log line is not JSON: {line!r}\n{text}") from None
    assert all(isinstance(entry, dict) and "event" in entry for entry in parsed), text
    uvicorn_lines = [e for e in parsed if str(e.get("logger", "")).startswith("uvicorn")]
    events = [str(entry["event"]) for entry in uvicorn_lines]
    assert any(event.startswith("Started server process") for event in events), text
    assert any("shutdown" in event.lower() for event in events), text
    assert all(entry["level"] in {"info", "warning", "error"} for entry in uvicorn_lines)
    assert all("timestamp" in entry for entry in uvicorn_lines)
