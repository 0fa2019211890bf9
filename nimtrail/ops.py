"""Self-observability shared by every long-running stage: typed events that both log and
count, and the /healthz + /metrics endpoints.

Each stage owns a registry, so several stages can live in one test process without their
metrics colliding. Metric names follow nimtrail_<stage>_<thing>_<unit>_total.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class StageMetrics:
    """Counters and gauges of one stage, created on first use with fixed label names."""

    def __init__(self, stage: str):
        self.stage = stage
        self.registry = CollectorRegistry()
        self._metrics: dict[str, Counter | Gauge] = {}
        self._lock = threading.Lock()
        self._held: dict[type, tuple[float, float]] = {}  # summarised event -> (last logged, amount since)

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

    def due(self, event: type, every: float, amount: float) -> float | None:
        """For an event logged at most once per `every` seconds: the amount to log now
        (everything since its last line), or None while it is held."""
        now = time.monotonic()
        with self._lock:
            logged, held = self._held.get(event, (float("-inf"), 0.0))
            held += amount
            if now - logged < every:
                self._held[event] = (logged, held)
                return None
            self._held[event] = (now, 0.0)
            return held


class Event:
    """One thing that happened: logs a sentence and counts it under the same labels."""

    level = logging.INFO
    message = ""
    thing = ""
    unit = "total"
    doc = ""
    labels: tuple[str, ...] = ()
    # Seconds: an event that recurs with every batch while a condition lasts logs at most
    # once per this long, its `count` the amount since its last line (0: every time).
    every = 0.0

    def __init__(self, **values: object):
        self.values = values

    def emit(self, metrics: StageMetrics, logger: logging.Logger, amount: float = 1) -> None:
        label_values = [str(self.values.get(k, "")) for k in self.labels]
        counter = metrics.counter(self.thing, self.unit, self.doc, self.labels)
        (counter.labels(*label_values) if self.labels else counter).inc(amount)
        if not logger.isEnabledFor(self.level):
            return
        if not self.every:
            logger.log(self.level, self.message, self.values)
        elif (held := metrics.due(type(self), self.every, amount)) is not None:
            logger.log(self.level, self.message, {**self.values, "count": int(held)})


def health_response(path: str, metrics: StageMetrics,
                    healthy: Callable[[], bool]) -> tuple[int, str, bytes] | None:
    """Answer /healthz and /metrics for any stage's HTTP handler; None for other paths."""
    if path == "/healthz":
        ok = healthy()
        return (200 if ok else 503), "application/json", b'{"status":"ok"}' if ok else b'{"status":"unhealthy"}'
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, metrics.exposition()
    return None
