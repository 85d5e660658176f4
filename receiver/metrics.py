"""Prometheus metrics at ``GET /metrics`` (bearer admin token, like /api).

Counters live in a registry per app (no import-time globals), so they count this process.
The queue gauges are read from the database at scrape time, so they are the same whichever
process answers.

The counters are :class:`Tally` objects: a plain dict of label values → count, rendered by
the registry only when ``/metrics`` is scraped. prometheus_client's own ``Counter`` takes a
lock and validates its labels on every increment; the intake counts every callback twice
(by answer and by route), and that bookkeeping was a visible share of its CPU. Everything
runs on the event loop's thread, so the dict needs no lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Tally(Collector):
    """A labelled Prometheus counter that costs one dict update per increment."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels}")
        values = self._values
        values[labels] = values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def describe(self) -> Iterable[Metric]:
        yield self._family()

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for labels, value in sorted(self._values.items()):
            family.add_metric(labels, value)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.callbacks = Tally(
            "signback_callbacks_total",
            "Callbacks answered, by provider, channel and answer (accepted, duplicate, or status)",
            ["provider", "channel", "answer"],
            self.registry,
        )
        self.events = Tally(
            "signback_events_processed_total",
            "Inbox rows processed by the pipeline, by provider, kind and result",
            ["provider", "kind", "result"],
            self.registry,
        )
        self.attempts = Tally(
            "signback_outbox_attempts_total",
            "Outbound calls, by operation and outcome (ok, retry, throttled: the provider"
            " asked us to wait, not counted as an attempt; dead, skipped; deferred: held back"
            " by signback's own rate budget, nothing sent)",
            ["operation", "outcome"],
            self.registry,
        )
        self.attempt_seconds = Histogram(
            "signback_outbox_attempt_seconds",
            "Duration of outbound calls to providers",
            ["operation"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.http = Tally(
            "signback_http_responses_total",
            "HTTP answers by route group (/hooks/<provider>, /return, /api, …) and status",
            ["route", "status"],
            self.registry,
        )
        self.connections_closed = Tally(
            "signback_connections_closed_total",
            "Connections closed by signback's connection guard, by reason (header_timeout, "
            "body_timeout, head_too_large, idle_closed_at_capacity, refused_at_capacity, …)",
            ["reason"],
            self.registry,
        )
        self.archived = Tally(
            "signback_archived_files_total",
            "Files archived (receiver/archive/), by provider and kind (signed, audit_trail, …)",
            ["provider", "kind"],
            self.registry,
        )
        self.archived_bytes = Tally(
            "signback_archived_bytes_total",
            "Bytes of the files archived, by provider",
            ["provider"],
            self.registry,
        )
        self.background_held = Tally(
            "signback_background_held_seconds_total",
            "Seconds the pipeline and the outbox were held back so that callbacks queued on"
            " the event loop were acknowledged first (signback serve with its worker)",
            [],
            self.registry,
        )
        self._queue_counts: dict[str, dict[str, int]] = {}
        self._stale_counts: dict[tuple[str, str], int] = {}
        self._durations: dict[str, Histogram] = {}
        self.registry.register(self.queue_collector())

    def observe_attempt(self, operation: str, seconds: float) -> None:
        """``attempt_seconds.labels(operation).observe(seconds)``, the child looked up once."""
        child = self._durations.get(operation)
        if child is None:
            child = self._durations[operation] = self.attempt_seconds.labels(operation)
        child.observe(seconds)

    def set_queue_counts(self, inbox: dict[str, int], outbox: dict[str, int]) -> None:
        self._queue_counts = {"inbox": inbox, "outbox": outbox}

    def set_stale_counts(self, counts: dict[tuple[str, str], int]) -> None:
        """Requests silent longer than their state's threshold, by (provider, state)."""
        self._stale_counts = counts

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def queue_collector(self) -> Collector:
        metrics = self

        class QueueCollector(Collector):
            def collect(self) -> Iterable[GaugeMetricFamily]:
                for table, counts in metrics._queue_counts.items():
                    family = GaugeMetricFamily(
                        f"signback_{table}_rows",
                        f"Rows in the {table} in each working status (read at scrape time;"
                        " finished rows are not counted here, they grow without end: the"
                        " *_total counters count what was processed and sent)",
                        labels=["status"],
                    )
                    for status, n in sorted(counts.items()):
                        family.add_metric([status], n)
                    yield family
                stale = GaugeMetricFamily(
                    "signback_stale_requests",
                    "Open requests silent longer than their state's threshold"
                    " (SIGNBACK_STALE_AFTER; read at scrape time)",
                    labels=["provider", "state"],
                )
                for (provider, state), n in sorted(metrics._stale_counts.items()):
                    stale.add_metric([provider, state], n)
                yield stale

        return QueueCollector()
