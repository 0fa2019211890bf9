"""OTLP logs and metrics normalisers (pure), on real opentelemetry-proto messages."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from nimtrail import raw, records
from nimtrail.errors import PermanentError
from processors import evidence as ev, normalize, scrapes
from processors.content import ContentPolicy
from processors.otlp_metrics import metric_name
from processors.pipeline import Pipeline
from tests import scenarios as sc

T = dt.datetime(2026, 3, 3, 12, 0, 0, tzinfo=dt.timezone.utc)
POLICY = ContentPolicy()
PROFILE = "a" * 64


def value_of(v) -> AnyValue:
    if isinstance(v, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(kv(k, x) for k, x in v.items())
        return out
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=v)


def kv(key: str, v) -> KeyValue:
    return KeyValue(key=key, value=value_of(v))


def log_record(body, at: dt.datetime | None = None, *, severity: str = "", observed: dt.datetime | None = None):
    record = logs_pb2.LogRecord(time_unix_nano=sc.ns(at) if at else 0,
                                observed_time_unix_nano=sc.ns(observed or at or T), severity_text=severity)
    if body is not None:
        record.body.CopyFrom(value_of(body))
    return record


def logs_request(records_: list, resource: dict | None = None) -> bytes:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.extend(kv(k, v) for k, v in (resource or sc.NIM_RESOURCE).items())
    rl.scope_logs.add().log_records.extend(records_)
    return request.SerializeToString()


def at(seconds: float) -> dt.datetime:
    return T + dt.timedelta(seconds=seconds)


def test_otlp_log_bodies_become_the_evidence_samples_and_observations_filelog_gives():
    message = logs_request([
        # NIM 2.x JSONL line as a string body: the record's time wins over the line's.
        log_record(json.dumps({"level": "INFO", "time": "2026-03-03 11:59:00", "file_name": "x.py",
                               "line_number": 1, "message": "Received request chatcmpl-1: params: {}"}), at(1)),
        # NIM 1.x JSONL line as a kvlist body (a Collector's json parser), no record time.
        log_record({"level": "INFO", "time": "03-03 12:00:02.500", "file_path": "/x.py", "line_number": "9",
                    "message": "Finished request chatcmpl-1."}, None, observed=at(3)),
        # A log bridge's bare message: level and time beside it.
        log_record("Received request chatcmpl-2: params: SamplingParams(n=1)", at(4), severity="INFO"),
        log_record("Aborted request chatcmpl-2", at(5), severity="WARNING"),
        # The NIM text logger, the stats line.
        log_record("INFO 03-03 12:00:06 metrics.py:341] Avg prompt throughput: 12.5 tokens/s, "
                   "Avg generation throughput: 30.0 tokens/s, Running: 2 reqs, GPU KV cache usage: 3.1%", at(6)),
        log_record(f"INFO 03-03 12:00:07 nim.py:1] Selected profile: {PROFILE} (vllm-fp16-tp1)", at(7)),
        log_record("Profile metadata: gpu: H100", at(7.5), severity="INFO"),
        # What fits no shape: kept and counted.
        log_record("\x1b[0m banner without a severity", at(8)),
        log_record(42, at(9)),
        log_record(None, at(10)),
    ])
    found = normalize.normalise(normalize.OTLP_LOGS, message, POLICY)
    calls = {(e.key, e.source): e.fields for e in found.evidence}
    assert {e.source for e in found.evidence} == {ev.LOG_NIM}
    first = calls[("chatcmpl-1", ev.LOG_NIM)]
    started = [e.fields for e in found.evidence if e.key == "chatcmpl-1" and "started_at" in e.fields][0]
    ended = [e.fields for e in found.evidence if e.key == "chatcmpl-1" and "ended_at" in e.fields][0]
    assert started["started_at"] == sc.iso(at(1))
    assert ended["ended_at"] == "2026-03-03T12:00:02.500000Z"  # the line's own time, year from observed
    assert first["identities"] == ["k8s:prod/llama-3-1-8b", "pod:prod/llama-3-1-8b-7d9f-abcde", "svc:nim-llama"]
    aborted = [e.fields for e in found.evidence if e.key == "chatcmpl-2" and "ended_at" in e.fields][0]
    assert aborted["status"] == "aborted" and aborted["ended_at"] == sc.iso(at(5))
    by_metric = {s["metric"]: s for s in found.samples}
    assert by_metric["nim_log:avg_prompt_throughput_tokens_per_second"]["value"] == 12.5
    assert by_metric["nim_log:gpu_kv_cache_usage_ratio"]["value"] == pytest.approx(0.031)
    assert by_metric["nim_log:running_requests"]["labels"] == {"source": "otlp:prod/llama-3-1-8b-7d9f-abcde"}
    [observation] = found.observations
    assert observation["facts"]["profile_id"] == PROFILE
    assert observation["facts"]["profile_tags"] == {"gpu": "H100"}
    [events] = found.log_events
    assert [e["text"] for e in events["events"]] == ["\x1b[0m banner without a severity", "42"]
    assert events["source"] == "otlp:prod/llama-3-1-8b-7d9f-abcde"
    assert found.line_counts["unparsed"] == 2 and found.line_counts["empty"] == 1
    assert found.line_counts["request"] == 4 and found.line_counts["startup"] == 2
    # Samples and the observation name no deployment: the pipeline places them.
    [(identities, unplaced)] = found.unplaced
    assert identities[0] == "k8s:prod/llama-3-1-8b" and len(unplaced) == len(found.samples) + 1
    again = normalize.normalise(normalize.OTLP_LOGS, message, POLICY)
    assert [e.evidence_id for e in again.evidence] == [e.evidence_id for e in found.evidence]


def test_the_pipeline_joins_otlp_log_lines_with_spans_and_places_samples_by_identity():
    pipeline = Pipeline()
    pipeline.deployment(sc.deployment_message(sc.deployment("prod/llama-3-1-8b", 1, T - dt.timedelta(days=1)))[1])
    pipeline.handle(normalize.OTLP_LOGS, logs_request([
        log_record("Received request chatcmpl-9: params: {}", at(1), severity="INFO"),
        log_record("Finished request chatcmpl-9.", at(2), severity="INFO"),
        log_record("Engine 000: Avg prompt throughput: 1.0 tokens/s, Avg generation throughput: 2.0 tokens/s",
                   at(3), severity="INFO"),
        log_record(f"Selected profile: {PROFILE} (vllm-fp16-tp1)", at(4), severity="INFO"),
    ]), 0, "otlp_logs")
    out = pipeline.take()
    [call] = out.records["model_call"]
    assert (call["call_id"], call["deployment_id"], call["deployment_version"]) == ("chatcmpl-9", "prod/llama-3-1-8b", 1)
    assert (call["started_at"], call["ended_at"]) == (sc.iso(at(1)), sc.iso(at(2)))
    assert {s["deployment_id"] for s in out.records["metric_sample"]} == {"prod/llama-3-1-8b"}
    assert [o["deployment"] for o in out.observations] == ["prod/llama-3-1-8b"]


def test_a_resource_can_name_its_deployment_outright():
    found = normalize.normalise(normalize.OTLP_LOGS, logs_request(
        [log_record("Finished request chatcmpl-3.", at(1), severity="INFO")],
        {"service.name": "nim", "host.name": "gpu-7", "nimtrail.deployment": "lab/nim"}), POLICY)
    [item] = found.evidence
    assert item.fields["identities"] == ["dep:lab/nim", "svc:nim"]


# -- metrics ------------------------------------------------------------------------------

def metrics_request(metrics: list, resource: dict | None = None) -> bytes:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.extend(kv(k, v) for k, v in (resource or sc.NIM_RESOURCE).items())
    rm.scope_metrics.add().metrics.extend(metrics)
    return request.SerializeToString()


def gauge(name: str, value: float, labels: dict, *, unit: str = "") -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name, unit=unit)
    metric.gauge.data_points.add(time_unix_nano=sc.ns(T), as_double=value,
                                 attributes=[kv(k, v) for k, v in labels.items()])
    return metric


def counter(name: str, value: int, labels: dict, *, unit: str = "", delta: bool = False) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name, unit=unit)
    metric.sum.is_monotonic = True
    metric.sum.aggregation_temporality = (metrics_pb2.AGGREGATION_TEMPORALITY_DELTA if delta
                                          else metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE)
    metric.sum.data_points.add(time_unix_nano=sc.ns(T), as_int=value,
                               attributes=[kv(k, v) for k, v in labels.items()])
    return metric


def histogram(name: str, bounds: list[float], counts: list[int], total: float, labels: dict,
              *, unit: str = "") -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name, unit=unit)
    metric.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    metric.histogram.data_points.add(time_unix_nano=sc.ns(T), count=sum(counts), sum=total,
                                     explicit_bounds=bounds, bucket_counts=counts,
                                     attributes=[kv(k, v) for k, v in labels.items()])
    return metric


@pytest.mark.parametrize("name,unit,counter_,expected", [
    ("vllm:time_to_first_token_seconds", "s", False, "vllm:time_to_first_token_seconds"),
    ("vllm.time_to_first_token", "s", False, "vllm:time_to_first_token_seconds"),
    ("vllm.e2e_request_latency_seconds", "s", False, "vllm:e2e_request_latency_seconds"),
    ("vllm.prompt_tokens", "{token}", True, "vllm:prompt_tokens_total"),
    ("vllm:prompt_tokens_total", "", True, "vllm:prompt_tokens_total"),
    ("e2e_request_latency_seconds", "s", False, "e2e_request_latency_seconds"),
    ("DCGM_FI_DEV_GPU_UTIL", "", False, "DCGM_FI_DEV_GPU_UTIL"),
    ("gen_ai.server.time_to_first_token", "s", False, "gen_ai:time_to_first_token_seconds"),
    ("process.cpu.time", "s", True, "process_cpu_time_seconds_total"),
])
def test_otlp_metric_names_become_the_names_a_scrape_gives(name, unit, counter_, expected):
    assert metric_name(name, unit, counter_) == expected


def test_otlp_histograms_become_the_samples_a_scrape_of_the_same_histogram_gives():
    otlp = normalize.normalise(normalize.OTLP_METRICS, metrics_request([
        histogram("vllm.time_to_first_token", [0.05, 0.5], [1, 2, 1], 0.9, {"model_name": "m"}, unit="s"),
        gauge("vllm:num_requests_running", 2.0, {"model_name": "m"}),
        counter("vllm.prompt_tokens", 120, {"model_name": "m"}, unit="{token}"),
    ]), POLICY)
    scraped, _ = scrapes.normalise(raw.decode(sc.scrape_message("http://llama:8000/v1/metrics", T, [
        {"name": "vllm:time_to_first_token_seconds_bucket", "labels": {"model_name": "m", "le": "0.05"}, "value": 1.0},
        {"name": "vllm:time_to_first_token_seconds_bucket", "labels": {"model_name": "m", "le": "0.5"}, "value": 3.0},
        {"name": "vllm:time_to_first_token_seconds_bucket", "labels": {"model_name": "m", "le": "+Inf"}, "value": 4.0},
        {"name": "vllm:time_to_first_token_seconds_sum", "labels": {"model_name": "m"}, "value": 0.9},
        {"name": "vllm:time_to_first_token_seconds_count", "labels": {"model_name": "m"}, "value": 4.0},
        {"name": "vllm:num_requests_running", "labels": {"model_name": "m"}, "value": 2.0},
        {"name": "vllm:prompt_tokens_total", "labels": {"model_name": "m"}, "value": 120.0},
    ]), raw.SCRAPES_REQUIRED))
    scraped_by = {s["metric"]: s for s in scraped if s["metric"] != "up"}
    otlp_by = {s["metric"]: s for s in otlp.samples}
    assert set(otlp_by) == set(scraped_by)
    for metric, sample in otlp_by.items():
        want = scraped_by[metric]
        assert (sample["value"], sample["buckets"], sample["ts"]) == (want["value"], want["buckets"], want["ts"]), metric
        # The series' own labels, plus the job and instance Prometheus would add.
        assert sample["labels"] == {**want["labels"], "job": "nim-llama", "instance": "prod/llama-3-1-8b-7d9f-abcde"}
        assert set(sample) == set(records.METRIC_SAMPLE_FIELDS) and sample["deployment_id"] is None
    [(identities, unplaced)] = otlp.unplaced
    assert "k8s:prod/llama-3-1-8b" in identities and len(unplaced) == 3
    again = normalize.normalise(normalize.OTLP_METRICS, metrics_request([
        gauge("vllm:num_requests_running", 2.0, {"model_name": "m"})]), POLICY)
    assert again.samples[0]["sample_id"] == otlp_by["vllm:num_requests_running"]["sample_id"]


def test_dcgm_summary_exponential_and_delta_points():
    exp = metrics_pb2.Metric(name="vllm.e2e_request_latency", unit="s")
    exp.exponential_histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    point = exp.exponential_histogram.data_points.add(time_unix_nano=sc.ns(T), count=6, sum=3.0, scale=0,
                                                      zero_count=1)
    point.positive.offset = -2  # buckets (0.25, 0.5], (0.5, 1], (1, 2]
    point.positive.bucket_counts.extend([2, 0, 3])
    summary = metrics_pb2.Metric(name="rpc_latency_seconds")
    sp = summary.summary.data_points.add(time_unix_nano=sc.ns(T), count=10, sum=2.5)
    sp.quantile_values.add(quantile=0.5, value=0.2)
    empty = metrics_pb2.Metric(name="vllm:num_requests_waiting")
    empty.gauge.data_points.add(time_unix_nano=sc.ns(T), flags=metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK)
    found = normalize.normalise(normalize.OTLP_METRICS, metrics_request([
        gauge("DCGM_FI_DEV_GPU_UTIL", 87.0, {"gpu": "0", "UUID": "GPU-1", "modelName": "NVIDIA H100 80GB HBM3"}),
        exp, summary, empty,
        counter("vllm.generation_tokens", 5, {}, delta=True),
    ], {"service.name": "dcgm", "service.instance.id": "node-1:9400", "nimtrail.deployment": "prod/llama-3-1-8b"}),
        POLICY)
    by = {(s["metric"], s["labels"].get("quantile")): s for s in found.samples}
    dcgm = by[("DCGM_FI_DEV_GPU_UTIL", None)]
    assert dcgm["value"] == 87.0 and dcgm["deployment_id"] == "prod/llama-3-1-8b"
    assert dcgm["labels"] == {"gpu": "0", "UUID": "GPU-1", "modelName": "NVIDIA H100 80GB HBM3",
                              "job": "dcgm", "instance": "node-1:9400"}
    e2e = by[("vllm:e2e_request_latency_seconds", None)]
    assert e2e["buckets"] == [[0.0, 1], [0.5, 3], [1.0, 3], [2.0, 6], ["+Inf", 6]] and e2e["value"] == 3.0
    assert by[("rpc_latency_seconds", "0.5")]["value"] == 0.2
    assert by[("rpc_latency_seconds_sum", None)]["value"] == 2.5
    assert by[("rpc_latency_seconds_count", None)]["value"] == 10.0
    assert ("vllm:num_requests_waiting", None) not in by and ("vllm:generation_tokens_total", None) not in by
    assert found.skipped_points == {"no_recorded_value": 1, "delta_point": 1}
    assert found.unplaced == []  # the resource named its deployment


def test_the_pipeline_places_otlp_samples_on_the_deployment_their_resource_names():
    pipeline = Pipeline()
    pipeline.deployment(sc.deployment_message(sc.deployment("prod/llama-3-1-8b", 1, T - dt.timedelta(days=1)))[1])
    pipeline.handle(normalize.OTLP_METRICS, metrics_request([gauge("vllm:num_requests_running", 1.0, {})],
                                                           {"service.name": "nim-llama"}), 0, "otlp_metrics")
    pipeline.handle(normalize.OTLP_METRICS, metrics_request([gauge("vllm:num_requests_running", 1.0, {})],
                                                           {"service.name": "someone-else"}), 0, "otlp_metrics")
    samples = pipeline.take().records["metric_sample"]
    assert sorted((s["labels"]["job"], s["deployment_id"] or "") for s in samples) == [
        ("nim-llama", "prod/llama-3-1-8b"), ("someone-else", "")]


@pytest.mark.parametrize("kind", [normalize.OTLP_LOGS, normalize.OTLP_METRICS])
def test_malformed_otlp_is_a_permanent_error_and_the_pipeline_dead_letters_it(kind):
    with pytest.raises(PermanentError) as raised:
        normalize.normalise(kind, b"\xff\x00not protobuf", POLICY)
    assert raised.value.reason == "malformed_protobuf" and "OTLP" in raised.value.detail
    pipeline = Pipeline()
    pipeline.handle(kind, b"\xff\x00not protobuf", 0, f"t.{kind}")
    pipeline.handle(kind, b"", 0, f"t.{kind}")  # an empty request is valid and says nothing
    [(source, value, error)] = pipeline.take().rejected
    assert (source, value, error.reason) == (f"t.{kind}", b"\xff\x00not protobuf", "malformed_protobuf")
