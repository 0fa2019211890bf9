"""Self-observability shared by every long-running stage: typed events that both log and
count, and the /healthz + /metrics endpoints.

Each stage owns a registry, so several stages can live in one test process without their
metrics colliding. Metric names follow nimtrail_<stage>_<thing>_<unit>_total.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class StageMetrics:
    """Counters and gauges of one stage, created on first use with fixed label names."""

    def __init__(self, stage: str):
        self.stage = stage
        self.registry = CollectorRegistry()
        self._metrics: dict[str, Counter | Gauge] = {}
        self._lock = threading.Lock()

    def counter(self, thing: str, unit: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        # prometheus-client appends _total to counters itself.
        name = f"nimtrail_{self.stage}_{thing}_{unit}"
        with self._lock:
            if name not in self._metrics:
                self._metrics[name] = Counter(name, doc, labels, registry=self.registry)
            return self._metrics[name]  # type: ignore[return-value]

    def gauge(self, thing: str, unit: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        name = f"nimtrail_{self.stage}_{thing}_{unit}"
        with self._lock:
            if name not in self._metrics:
                self._metrics[name] = Gauge(name, doc, labels, registry=self.registry)
            return self._metrics[name]  # type: ignore[return-value]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Event:
    """One thing that happened: logs a sentence and counts it under the same labels."""

    level = logging.INFO
    message = ""
    thing = ""
    unit = "total"
    doc = ""
    labels: tuple[str, ...] = ()

    def __init__(self, **values: object):
        self.values = values

    def emit(self, metrics: StageMetrics, logger: logging.Logger, amount: float = 1) -> None:
        label_values = [str(self.values.get(k, "")) for k in self.labels]
        counter = metrics.counter(self.thing, self.unit, self.doc, self.labels)
        (counter.labels(*label_values) if self.labels else counter).inc(amount)
        if logger.isEnabledFor(self.level):
            logger.log(self.level, self.message, self.values)


def health_response(path: str, metrics: StageMetrics,
                    healthy: Callable[[], bool]) -> tuple[int, str, bytes] | None:
    """Answer /healthz and /metrics for any stage's HTTP handler; None for other paths."""
    if path == "/healthz":
        ok = healthy()
        return (200 if ok else 503), "application/json", b'{"status":"ok"}' if ok else b'{"status":"unhealthy"}'
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, metrics.exposition()
    return None
