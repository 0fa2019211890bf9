"""Every time taken from input is held to [received - max_age, received + max_ahead]:
outside it, the receive time is stored and a clock_skew finding names the record, the
field and the value as sent — for spans, NIM log lines, scrapes, OTLP logs and metrics."""

from __future__ import annotations

import datetime as dt
import time

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1 import logs_pb2

from nimtrail import raw
from nimtrail.config import ClockConfig, Duration, ProcessorConfig, RetentionConfig
from processors import normalize
from processors.clock import DEFAULT_MAX_AGE, Clock, ClockLimits
from processors.pipeline import Pipeline
from tests.test_processors_otlp_signals import gauge, kv, logs_request, metrics_request

RECEIVED = time.time()
RECEIVED_ISO = dt.datetime.fromtimestamp(RECEIVED, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
FAR_NS = 2**64 - 2


def _run(kind: str, value: bytes):
    pipeline = Pipeline(ProcessorConfig())
    pipeline.handle(kind, value, 0.0, received=RECEIVED)
    found = normalize.normalise(kind, value, pipeline.policy, Clock(pipeline.clock_limits, RECEIVED))
    out = pipeline.take()
    assert not out.rejected
    skew = [f for f in out.records["finding"] if f["kind"] == "clock_skew"]
    return found, skew, out


def _spans(start: int, end: int) -> bytes:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="chat llama", kind=3,
        start_time_unix_nano=start, end_time_unix_nano=end)
    span.attributes.extend([kv("gen_ai.operation.name", "chat"), kv("gen_ai.response.id", "chatcmpl-far")])
    return request.SerializeToString()


def test_a_span_dated_2554_gets_the_receive_time_and_a_finding_with_the_raw_nanoseconds():
    found, skew, _ = _run(normalize.SPANS, _spans(FAR_NS, FAR_NS + 1))
    fields = found.evidence[0].fields
    assert fields["started_at"] == fields["ended_at"] == RECEIVED_ISO
    sent = {f["detail"]["field"]: f["detail"]["sent"] for f in skew}
    assert sent == {"started_at": str(FAR_NS), "ended_at": str(FAR_NS + 1)}
    assert all(f["subject_ids"] == ["0202020202020202", "chatcmpl-far"] for f in skew)
    assert all(f["detail"]["sent_as"] == "unix_nano" and f["version"] == 1 and f["observed_at"] for f in skew)


def test_a_span_of_1970_is_flagged_and_a_span_of_now_is_not():
    _, skew, _ = _run(normalize.SPANS, _spans(1, 2))
    assert {f["detail"]["sent"] for f in skew} == {"1", "2"}
    now_ns = int(RECEIVED * 1e9)
    found, skew, _ = _run(normalize.SPANS, _spans(now_ns - 10**9, now_ns))
    assert skew == [] and found.evidence[0].fields["started_at"] < RECEIVED_ISO


def test_nim_log_lines_of_year_3000_name_the_line_and_the_call():
    lines = [{"text": orjson.dumps({"level": "INFO", "time": "3000-01-01 00:00:00", "file_name": "x.py",
                                    "line_number": 1, "message": "Received request chatcmpl-3000: x"}).decode(),
              "offset": 0},
             {"text": "INFO 3000-01-01 00:00:01 x.py:1] Avg prompt throughput: 1.0 tokens/s, "
                      "Avg generation throughput: 2.0 tokens/s", "offset": 10},
             {"text": 'INFO:     10.0.0.1:5 - "GET /v1/health/ready HTTP/1.1" 200 OK', "offset": 20,
              "time": "3000-01-01T00:00:00Z"}]
    doc = {"source": "prod/llama", "deployment": "prod/llama", "received_at": RECEIVED_ISO, "lines": lines}
    found, skew, out = _run(normalize.NIMLOGS, raw.encode(doc))
    assert found.evidence[0].fields["started_at"] == RECEIVED_ISO
    assert {s["ts"] for s in out.records["metric_sample"]} == {RECEIVED_ISO}
    # the health probe stores no time: no finding for it
    assert sorted(f["detail"]["sent"][:19] for f in skew) == ["3000-01-01T00:00:00", "3000-01-01T00:00:01"]
    assert ["prod/llama||0", "chatcmpl-3000"] in [f["subject_ids"] for f in skew]


def test_scrape_sample_times_out_of_range_or_unreadable_are_replaced():
    doc = {"target": "http://llama:8000/metrics", "deployment": "prod/llama", "scraped_at": RECEIVED_ISO,
           "up": True, "samples": [{"name": "vllm:num_requests_running", "labels": {}, "value": 1.0,
                                    "timestamp": 1e300},
                                   {"name": "vllm:num_requests_waiting", "labels": {}, "value": 1.0,
                                    "timestamp": 5}]}
    _, skew, out = _run(normalize.SCRAPES, raw.encode(doc))
    assert {s["ts"] for s in out.records["metric_sample"]} == {RECEIVED_ISO}
    assert sorted(f["detail"]["sent"] for f in skew) == ["1e+300", "5"]
    assert all(s["observed_at"] for s in out.records["metric_sample"])


def test_otlp_log_and_metric_times_are_held_too():
    record = logs_pb2.LogRecord(time_unix_nano=FAR_NS, observed_time_unix_nano=FAR_NS)
    record.body.string_value = "INFO 02-20 21:47:24 x.py:1] Finished request chatcmpl-otlp."
    found, skew, _ = _run(normalize.OTLP_LOGS, logs_request([record]))
    assert found.evidence[0].fields["ended_at"] == RECEIVED_ISO
    assert [(f["detail"]["sent"], f["detail"]["sent_as"]) for f in skew] == [(str(FAR_NS), "unix_nano")]

    metric = gauge("vllm:num_requests_running", 1.0, {})
    metric.gauge.data_points[0].time_unix_nano = FAR_NS
    _, skew, out = _run(normalize.OTLP_METRICS, metrics_request([metric]))
    assert [s["ts"] for s in out.records["metric_sample"]] == [RECEIVED_ISO]
    assert [f["detail"]["sent"] for f in skew] == [str(FAR_NS)]


def test_limits_come_from_the_config_and_the_longest_retention_class():
    assert ClockLimits.of(ClockConfig()).max_ahead == 3600
    longest = RetentionConfig(metadata=Duration(10 * 86400), content=Duration(86400), samples=Duration(1),
                              samples_rollup=Duration(1), access_log=Duration(20 * 86400))
    assert ClockLimits.of(ClockConfig(), longest).max_age == 20 * 86400
    forever = RetentionConfig(metadata=Duration(0), content=Duration(0), samples=Duration(0),
                              samples_rollup=Duration(0), access_log=Duration(0))
    assert ClockLimits.of(ClockConfig(), forever).max_age == DEFAULT_MAX_AGE
    assert ClockLimits.of(ClockConfig(max_age=Duration(60)), longest).max_age == 60
