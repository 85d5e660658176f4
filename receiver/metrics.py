"""Prometheus metrics at ``GET /metrics`` (bearer admin token, like /api).

Counters live in a registry per app (no import-time globals), so they count this process.
The queue gauges are read from the database at scrape time, so they are the same whichever
process answers.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.callbacks = Counter(
            "signback_callbacks_total",
            "Callbacks answered, by provider, channel and answer (accepted, duplicate, or status)",
            ["provider", "channel", "answer"],
            registry=self.registry,
        )
        self.events = Counter(
            "signback_events_processed_total",
            "Inbox rows processed by the pipeline, by provider, kind and result",
            ["provider", "kind", "result"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "signback_outbox_attempts_total",
            "Outbound calls, by operation and outcome (ok, retry, dead, skipped)",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.attempt_seconds = Histogram(
            "signback_outbox_attempt_seconds",
            "Duration of outbound calls to providers",
            ["operation"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.http = Counter(
            "signback_http_responses_total",
            "HTTP answers by route group (/hooks/firma, /return, /api, …) and status",
            ["route", "status"],
            registry=self.registry,
        )
        self._queue_counts: dict[str, dict[str, int]] = {}
        self._children: dict[tuple[object, ...], Counter] = {}
        self.registry.register(self.queue_collector())

    def count(self, counter: Counter, *labels: str) -> None:
        """``counter.labels(*labels).inc()``, with the labelled child looked up once: the
        intake counts every callback, and ``labels()`` takes a lock and validates each time.
        """
        key = (id(counter), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        child.inc()

    def set_queue_counts(self, inbox: dict[str, int], outbox: dict[str, int]) -> None:
        self._queue_counts = {"inbox": inbox, "outbox": outbox}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def queue_collector(self) -> Collector:
        metrics = self

        class QueueCollector(Collector):
            def collect(self) -> Iterable[GaugeMetricFamily]:
                for table, counts in metrics._queue_counts.items():
                    family = GaugeMetricFamily(
                        f"signback_{table}_rows",
                        f"Rows in the {table} by status (read at scrape time)",
                        labels=["status"],
                    )
                    for status, n in sorted(counts.items()):
                        family.add_metric([status], n)
                    yield family

        return QueueCollector()
