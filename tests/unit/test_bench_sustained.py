"""The sustained-load scenario's own parts (bench/sustained.py, bench/pacer.py): when a run
counts as keeping up, the chart it draws, and the paced sender against a real server."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench.pacer import pace
from bench.sustained import PacedRun, Sample, svg_chart

SVG = "{http://www.w3.org/2000/svg}"


def run(backlogs: list[int], *, rate: float = 100.0, seconds: float = 10.0) -> PacedRun:
    samples = [Sample(t=float(i + 1), backlog=b, cpu=0.5) for i, b in enumerate(backlogs)]
    return PacedRun("run", rate, seconds, {"n2xx": int(rate * seconds)}, samples, 1.0)


@pytest.mark.parametrize(
    ("backlogs", "bounded"),
    [
        ([5, 8, 6, 9, 7, 8, 6, 7, 9, 8], True),  # a few in hand all along: keeps up
        ([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], False),  # grows all along
        ([0, 0, 0, 0, 40, 60, 80, 90, 95, 99], False),  # fell behind in the second half
        ([500, 400, 300, 200, 100, 50, 20, 10, 5, 0], True),  # caught up after a burst
    ],
)
def test_a_run_keeps_up_when_its_backlog_stays_bounded(backlogs: list[int], bounded: bool) -> None:
    paced = run(backlogs)
    assert paced.bounded() is bounded
    assert paced.peak == max(backlogs)
    # What came in less what was left at the end, per second of load.
    assert paced.processed_rate == pytest.approx((1000 - backlogs[-1]) / 10)


def test_the_chart_is_an_svg_with_one_line_per_run() -> None:
    text = svg_chart(
        [("SQLite & co", [(0, 0), (5, 120), (10, 40)]), ("PostgreSQL", [(0, 0), (10, 3000)])],
        title="Backlog <over time>",
        x_label="seconds",
        y_label="callbacks",
        mark_x=8,
        dashed=[False, True],
    )
    root = ET.fromstring(text)  # noqa: S314 (our own text) well-formed: labels are escaped
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2
    assert lines[1].get("stroke-dasharray") is not None
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "SQLite & co" in labels
    assert "Backlog <over time>" in labels
    assert "5,000" in labels  # the y axis ends at the next 1-2-5 step above 3,000


def test_the_pacer_sends_at_its_rate_over_real_connections(tmp_path: Path) -> None:
    """Open loop against a server that answers each request: every callback is sent and
    answered, and sending them takes as long as the rate says."""
    data = tmp_path / "data.tsv"
    data.write_text('template\n/hooks/x\t{"state":"tosign","bench":\n')
    answered: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            answered.append(await reader.readexactly(length))
            writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 8\r\n\r\naccepted")
        writer.close()

    async def main() -> float:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        began = loop.time()
        async with server:
            totals = await pace(
                f"http://127.0.0.1:{port}",
                data,
                rate=200,
                seconds=1.0,
                connections=8,
                seq_base=0,
            )
        assert (totals.sent, totals.n2xx, totals.other, totals.errors) == (200, 200, 0, 0)
        return loop.time() - began

    took = asyncio.run(main())
    assert 0.9 <= took < 5
    sent = sorted(f'{{"state":"tosign","bench":{n}}}'.encode() for n in range(200))
    assert sorted(answered) == sent
