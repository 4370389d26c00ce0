"""The metrics one tier exposes on /metrics, kept by `prometheus_client` in one registry per app (several apps
in one process, as in the tests, never share or clash), with the process metrics (CPU, memory, open files,
garbage collector, Python version) of the process serving it.

Every series carries service="<tier>". The exposition's label order is prometheus_client's (alphabetical);
Prometheus ignores label order. Counters carry no `_created` series (the exposition stays as small as before).
"""

from __future__ import annotations

from collections.abc import Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

PROMETHEUS_CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)

prometheus_client.disable_created_metrics()


class _Series:
    """A prometheus_client metric with the service label filled in; `labels` are the other label values."""

    def __init__(
        self, metric: Counter | Histogram, registry: CollectorRegistry, service: str, sample: str, labels: Sequence[str]
    ) -> None:
        self.metric, self.registry, self.service = metric, registry, service
        self.sample, self.label_names = sample, tuple(labels)  # the sample `get` reads, the labels but service
        self._children: dict[tuple[str, ...], object] = {}

    def child(self, labels: tuple[object, ...]):
        key = tuple(str(v) for v in labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = self.metric.labels(*key, self.service)
        return found


class ServiceCounter(_Series):
    def inc(self, *labels: object, amount: float = 1.0) -> None:
        self.child(labels).inc(amount)

    def get(self, *labels: object) -> float:
        wanted = {**dict(zip(self.label_names, (str(v) for v in labels))), "service": self.service}
        return float(self.registry.get_sample_value(self.sample, wanted) or 0.0)


class ServiceHistogram(_Series):
    def observe(self, value: float, *labels: object) -> None:
        self.child(labels).observe(value)


class ServiceMetrics:
    """The metrics one tier exposes on /metrics, in a registry of its own (`registry`)."""

    def __init__(self, tier: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)

        def counter(name: str, help_text: str, labels: Sequence[str] = ()) -> ServiceCounter:
            metric = Counter(name, help_text, (*labels, "service"), registry=self.registry)
            return ServiceCounter(metric, self.registry, tier, name, labels)

        def histogram(name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> ServiceHistogram:
            metric = Histogram(name, help_text, (*labels, "service"), buckets=buckets, registry=self.registry)
            return ServiceHistogram(metric, self.registry, tier, f"{name}_count", labels)

        self.requests = counter("dimee_requests_total", "HTTP requests by endpoint and status code", ("endpoint", "status"))
        self.latency = histogram(
            "dimee_request_duration_seconds", "HTTP request latency by endpoint", LATENCY_BUCKETS_S, ("endpoint",)
        )
        self.answers = counter(
            "dimee_answers_total",
            "Answers returned by this service (its own and those of later tiers), by answering tier and exit",
            ("tier", "exit", "degraded"),
        )
        self.client_disconnects = counter(
            "dimee_client_disconnects_total",
            "Requests whose client hung up before its body arrived (also counted as status 499)",
            ("endpoint",),
        )
        self.handoffs = counter("dimee_handoffs_total", "Handoff requests sent to the next tier by outcome", ("hop", "outcome"))
        self.handoff_bytes = counter(
            "dimee_handoff_bytes_sent_total", "Handoff body bytes sent (metadata section and payload)", ("hop",)
        )
        self.received_bytes = counter("dimee_handoff_bytes_received_total", "Handoff body bytes accepted")
        self.degraded = counter(
            "dimee_degraded_total", "Samples this service answered locally because the next tier failed", ("reason",)
        )
        self.policy_errors = counter("dimee_policy_errors_total", "Policy calls that failed (built-in rule used)")
        self.batch_size = histogram("dimee_forward_batch_size", "Samples per forward pass", BATCH_BUCKETS)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
