"""Counters and histograms in the Prometheus text exposition format, written by hand (no client library).

All updates happen on the event loop thread, so no locking is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: dict[str, str] | None = None) -> str:
    pairs = list(zip(names, values)) + list((extra or {}).items())
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape(str(value))}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: object, amount: float = 1.0) -> None:
        key = tuple(str(v) for v in labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, *labels: object) -> float:
        return self.values.get(tuple(str(v) for v in labels), 0.0)

    def render(self, constant: dict[str, str]) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, key, constant)} {_number(value)}")
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float], label_names: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}  # key -> (bucket counts, [sum, count])

    def observe(self, value: float, *labels: object) -> None:
        key = tuple(str(v) for v in labels)
        counts, totals = self.series.setdefault(key, ([0] * len(self.buckets), [0.0, 0.0]))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        totals[0] += value
        totals[1] += 1

    def render(self, constant: dict[str, str]) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, (counts, (total, count)) in sorted(self.series.items()):
            for bound, cumulative in zip(self.buckets, counts):
                le = dict(constant, le=_number(bound))
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {cumulative}")
            lines.append(f"{self.name}_bucket{_labels(self.label_names, key, dict(constant, le='+Inf'))} {int(count)}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key, constant)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key, constant)} {int(count)}")
        return lines


class ServiceMetrics:
    """The metrics one tier exposes on /metrics; every series carries service="<tier>"."""

    def __init__(self, tier: str) -> None:
        self.constant = {"service": tier}
        self.requests = Counter(
            "dimee_requests_total", "HTTP requests by endpoint and status code", ("endpoint", "status")
        )
        self.latency = Histogram(
            "dimee_request_duration_seconds", "HTTP request latency by endpoint", LATENCY_BUCKETS_S, ("endpoint",)
        )
        self.answers = Counter(
            "dimee_answers_total",
            "Answers returned by this service (its own and those of later tiers), by answering tier and exit",
            ("tier", "exit", "degraded"),
        )
        self.client_disconnects = Counter(
            "dimee_client_disconnects_total",
            "Requests whose client hung up before its body arrived (also counted as status 499)",
            ("endpoint",),
        )
        self.handoffs = Counter(
            "dimee_handoffs_total", "Handoff requests sent to the next tier by outcome", ("hop", "outcome")
        )
        self.handoff_bytes = Counter("dimee_handoff_bytes_sent_total", "Handoff body bytes sent", ("hop",))
        self.received_bytes = Counter("dimee_handoff_bytes_received_total", "Handoff body bytes accepted")
        self.degraded = Counter(
            "dimee_degraded_total", "Samples this service answered locally because the next tier failed", ("reason",)
        )
        self.policy_errors = Counter("dimee_policy_errors_total", "Policy calls that failed (built-in rule used)")
        self.batch_size = Histogram("dimee_forward_batch_size", "Samples per forward pass", BATCH_BUCKETS)

    def render(self) -> str:
        lines: list[str] = []
        for metric in (
            self.requests,
            self.latency,
            self.client_disconnects,
            self.answers,
            self.handoffs,
            self.handoff_bytes,
            self.received_bytes,
            self.degraded,
            self.policy_errors,
            self.batch_size,
        ):
            lines.extend(metric.render(self.constant))
        return "\n".join(lines) + "\n"
