"""Normalise OTLP metrics (`ExportMetricsServiceRequest`) into metric_sample records shaped
exactly as processors/scrapes.py shapes a scraped sample, so a histogram reaches the
latency query the same whichever way it arrived.

Names. What reaches nimtrail over OTLP is either a Prometheus metric carried across (the
OpenTelemetry Collector's prometheus receiver, or a Prometheus bridge in the process: the
name is kept, `vllm:time_to_first_token_seconds`, `DCGM_FI_DEV_GPU_UTIL`, NIM 1.x's
unprefixed `e2e_request_latency_seconds`) or an OpenTelemetry instrument, named with dots
and its unit apart (`vllm.time_to_first_token`, unit `s`). Both become the Prometheus name:
a leading `vllm.` / `sglang.` becomes the `vllm:` prefix, other dots become `_`, the unit
suffix is added when missing (`s` → `_seconds`, `ms` → `_milliseconds`, `By` → `_bytes`),
and a monotonic sum ends in `_total`. The GenAI semantic conventions' server histograms
(`gen_ai.server.time_to_first_token`, `gen_ai.server.request.duration`,
`gen_ai.server.time_per_output_token`) take the vLLM names they measure, under `gen_ai:`.

Points. A gauge or sum point is one sample. A histogram point is one sample with
`buckets = [[le, cumulative_count], ..., ["+Inf", count]]` and `value` = its sum; an
exponential histogram's buckets are converted to those bounds (base 2^(2^-scale)). A
summary point is its quantiles (label `quantile`), `_sum` and `_count`, as a scrape gives
them. Labels are the point's attributes, plus `job` (`service.name`) and `instance`
(`service.instance.id`, the pod, or the host) where the point has none, as Prometheus adds
to every series: two pods' cumulative series must not merge into one. Delta-temporality
points are counted and skipped: turning them into cumulative series takes state across
messages, and every sample here must be a pure function of its message.

The deployment is the resource's `nimtrail.deployment`, else left for the pipeline to
place by the resource's identities.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import orjson
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2

from nimtrail import records
from nimtrail.records import iso_from_ns, sha256_hex
from processors.clock import UNIX_NANO, Clock, default_clock
from processors.otlp_values import DEPLOYMENT_ATTRIBUTE, attributes, resource_identities, resource_source

_NAMESPACES = ("vllm", "sglang")
_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}
_SEMCONV = {
    "gen_ai.server.time_to_first_token": "gen_ai:time_to_first_token_seconds",
    "gen_ai.server.request.duration": "gen_ai:e2e_request_latency_seconds",
    "gen_ai.server.time_per_output_token": "gen_ai:time_per_output_token_seconds",
}
_DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
_NO_VALUE = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK


@dataclasses.dataclass
class ResourceMetrics:
    identities: list[str]
    samples: list[dict[str, Any]]


def metric_name(name: str, unit: str = "", monotonic_sum: bool = False) -> str:
    """The Prometheus name of an OTLP metric (see the module docstring)."""
    if name in _SEMCONV:
        return _SEMCONV[name]
    if ":" not in name:
        head, dot, rest = name.partition(".")
        if dot and head in _NAMESPACES:
            name = f"{head}:{rest}"
    name = "".join(c if c.isalnum() or c in "_:" else "_" for c in name)
    suffix = _UNIT_SUFFIX.get(unit)
    if suffix and not (name.endswith(f"_{suffix}") or name.endswith(f"_{suffix}_total")):
        name += f"_{suffix}"
    if monotonic_sum and not name.endswith("_total"):
        name += "_total"
    return name


def _label(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _exponential_buckets(point: Any) -> list[tuple[float, int]]:
    """(upper bound, count) per bucket, ascending, of an exponential histogram point."""
    base = 2.0 ** (2.0 ** -point.scale)

    def bound(index: int) -> float:
        try:
            return base ** index
        except OverflowError:
            return math.inf

    out: list[tuple[float, int]] = []
    negative = point.negative
    # Negative bucket i holds [-base^(offset+i+1), -base^(offset+i)): highest index first.
    for i in reversed(range(len(negative.bucket_counts))):
        out.append((-bound(negative.offset + i), negative.bucket_counts[i]))
    out.append((0.0, point.zero_count))
    positive = point.positive
    for i, count in enumerate(positive.bucket_counts):
        out.append((bound(positive.offset + i + 1), count))
    return out


class _Resource:
    def __init__(self, resource: dict[str, Any], counts: dict[str, int], clock: Clock):
        self.clock = clock
        self.source = resource_source(resource)
        self.deployment = resource.get(DEPLOYMENT_ATTRIBUTE) or None
        self.extra = {k: v for k, v in (
            ("job", resource.get("service.name")),
            ("instance", resource.get("service.instance.id") or
             (f"{resource.get('k8s.namespace.name') or ''}/{resource['k8s.pod.name']}"
              if resource.get("k8s.pod.name") else None) or resource.get("host.name"))) if v}
        self.counts = counts
        self.samples: list[dict[str, Any]] = []

    def count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def emit(self, metric: str, point: Any, value: float | None, buckets: list | None = None,
             **more_labels: str) -> None:
        labels = {k: _label(v) for k, v in attributes(point.attributes).items()}
        labels.update(more_labels)
        for k, v in self.extra.items():
            labels.setdefault(k, v)
        ts = iso_from_ns(point.time_unix_nano)
        sample_id = sha256_hex([self.source, metric, labels, ts])[:32]  # from the time as sent
        ts = self.clock.clamp(ts, point.time_unix_nano, UNIX_NANO, "metric_sample", sample_id, "ts")
        self.samples.append(records.new("metric_sample", sample_id=sample_id, ts=ts,
                                        deployment_id=self.deployment, metric=metric, labels=labels,
                                        value=value, buckets=buckets, version=1))

    def points(self, points: Any, temporality: int | None = None) -> list[Any]:
        kept = []
        for point in points:
            if point.flags & _NO_VALUE:
                self.count("no_recorded_value")
            elif temporality == _DELTA:
                self.count("delta_point")
            else:
                kept.append(point)
        return kept

    def metric(self, metric: Any) -> None:
        kind = metric.WhichOneof("data")
        if kind == "gauge" or kind == "sum":
            data = getattr(metric, kind)
            counter = kind == "sum" and data.is_monotonic
            name = metric_name(metric.name, metric.unit, counter)
            for point in self.points(data.data_points, data.aggregation_temporality if kind == "sum" else None):
                value = point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int)
                self.emit(name, point, _finite(value))
        elif kind == "histogram" or kind == "exponential_histogram":
            data = getattr(metric, kind)
            name = metric_name(metric.name, metric.unit)
            for point in self.points(data.data_points, data.aggregation_temporality):
                if kind == "histogram":
                    bounds = list(point.explicit_bounds) + [math.inf]
                    pairs = list(zip(bounds, point.bucket_counts))
                else:
                    pairs = _exponential_buckets(point)
                buckets, total = [], 0
                for le, count in pairs:
                    if le != math.inf:
                        total += count
                        buckets.append([le, total])
                buckets.append(["+Inf", point.count])
                self.emit(name, point, _finite(point.sum) if point.HasField("sum") else None, buckets)
        elif kind == "summary":
            name = metric_name(metric.name, metric.unit)
            for point in self.points(metric.summary.data_points):
                for q in point.quantile_values:
                    self.emit(name, point, _finite(q.value), quantile=repr(float(q.quantile)))
                self.emit(f"{name}_sum", point, _finite(point.sum))
                self.emit(f"{name}_count", point, float(point.count))
        else:
            self.count("empty_metric")


def normalise(value: bytes, clock: Clock | None = None) -> tuple[list[ResourceMetrics], dict[str, int]]:
    """(samples per resource, counts of skipped points by reason) of one otlp_metrics
    message; `clock` bounds the points' times. Raises protobuf's DecodeError when `value`
    is not an ExportMetricsServiceRequest."""
    clock = clock or default_clock()
    request = ExportMetricsServiceRequest()
    request.ParseFromString(value)
    counts: dict[str, int] = {}
    out = []
    for resource_metrics in request.resource_metrics:
        resource = attributes(resource_metrics.resource.attributes)
        r = _Resource(resource, counts, clock)
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                r.metric(metric)
        if r.samples:
            out.append(ResourceMetrics(resource_identities(resource), r.samples))
    return out, counts
