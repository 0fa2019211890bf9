"""OTLP over gRPC and HTTP with the real OpenTelemetry SDK exporters, and every kind of bad
request: each gets a clear error or goes to the dead-letter topic with its reason, and
the collector keeps serving."""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import uuid

import grpc
import orjson
import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.collector_support import TopicReader, headers, metric, reasons, running
from tests.harness import Env

MAX_BODY = 256 * 1024


SPANS_TOPIC_LIMIT = 150_000  # the broker's max.message.bytes for this module's spans topic


@pytest.fixture(scope="module")
def world(tmp_path_factory, kafka_bootstrap):
    env = Env(tmp_path_factory.mktemp("otlp"), kafka_bootstrap, collector={"max_body_bytes": MAX_BODY})
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(env.config.topics.otlp_spans, 2, 1,
                                  topic_configs={"max.message.bytes": str(SPANS_TOPIC_LIMIT)})])
    admin.close()
    with running(env) as collector:
        t = env.config.topics
        readers = {name: TopicReader(kafka_bootstrap, getattr(t, name))
                   for name in ("otlp_spans", "otlp_logs", "otlp_metrics", "dlq")}
        yield env, collector, readers
        for reader in readers.values():
            reader.close()


def _exporters(protocol: str, env: Env):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        endpoint = f"127.0.0.1:{env.ports['grpc']}"
        kw = {"endpoint": endpoint, "insecure": True, "timeout": 10}
        return OTLPSpanExporter(**kw), OTLPLogExporter(**kw), OTLPMetricExporter(**kw)
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    base = env.otlp_http
    return (OTLPSpanExporter(endpoint=f"{base}/v1/traces", compression=Compression.Gzip, timeout=10),
            OTLPLogExporter(endpoint=f"{base}/v1/logs", timeout=10),
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics", compression=Compression.Gzip, timeout=10))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_exporters_deliver_spans_logs_and_metrics(world, protocol):
    env, _collector, readers = world
    tag = uuid.uuid4().hex[:12]
    span_exporter, log_exporter, metric_exporter = _exporters(protocol, env)
    resource = Resource.create({"service.name": f"svc-{tag}"})

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    with tracer_provider.get_tracer("test").start_as_current_span(f"chat {tag}") as span:
        trace_id = span.get_span_context().trace_id
    tracer_provider.shutdown()

    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    logger = logging.getLogger(f"otlp-test-{tag}")
    logger.propagate = False
    logger.addHandler(LoggingHandler(logger_provider=logger_provider))
    logger.warning("model answered %s", tag)
    logger_provider.shutdown()

    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter_provider.get_meter("test").create_counter(f"tokens_{tag}").add(42)
    meter_provider.force_flush()
    meter_provider.shutdown()

    def span_arrived(messages):
        for m in messages:
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(m.value)
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        if s.name == f"chat {tag}":
                            return m
        return None

    message = readers["otlp_spans"].wait(span_arrived, what=f"the {protocol} span in Kafka")
    assert message.key == f"{trace_id:032x}".encode()  # one trace, one partition
    readers["otlp_logs"].wait(lambda ms: any(
        tag in r.body.string_value
        for m in ms for rl in logs_service_pb2.ExportLogsServiceRequest.FromString(m.value).resource_logs
        for sl in rl.scope_logs for r in sl.log_records), what="the log record in Kafka")
    readers["otlp_metrics"].wait(lambda ms: any(
        metric_.name == f"tokens_{tag}"
        for m in ms for rm in metrics_service_pb2.ExportMetricsServiceRequest.FromString(m.value).resource_metrics
        for sm in rm.scope_metrics for metric_ in sm.metrics), what="the metric in Kafka")
    forwarded = metric(f"{env.otlp_http}/metrics", "nimtrail_collector_forwarded_items_total",
                       receiver=f"otlp_{protocol}/traces")
    assert forwarded >= 1


def _post(env: Env, path: str, body: bytes, content_type: str, **extra: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", env.ports["http"], timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type, **extra})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _good_request(name: str) -> bytes:
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = os.urandom(16), os.urandom(8), name
    return request.SerializeToString()


BAD_HTTP = {
    "malformed protobuf": (b"\x0a\xff\xff\xff\xff\x0f garbage", "application/x-protobuf", {}, 400, "malformed_protobuf"),
    "bad JSON": (b'{"resourceSpans": [', "application/json", {}, 400, "malformed_json"),
    "wrong content type": (b"<xml/>", "application/xml", {}, 415, "unsupported_content_type"),
    "gzip bomb": (gzip.compress(b"\0" * (64 * MAX_BODY)), "application/x-protobuf",
                  {"Content-Encoding": "gzip"}, 413, "body_too_large"),
    "oversized body": (os.urandom(MAX_BODY + 1), "application/x-protobuf", {}, 413, "body_too_large"),
    "malformed gzip": (b"\x1f\x8b\x08\x00 not gzip at all", "application/x-protobuf",
                       {"Content-Encoding": "gzip"}, 400, "malformed_gzip"),
}


def _spans_named(reader: TopicReader, prefix: str) -> list[str]:
    return [span.name for m in reader.poll()
            for rs in trace_service_pb2.ExportTraceServiceRequest.FromString(m.value).resource_spans
            for ss in rs.scope_spans for span in ss.spans if span.name.startswith(prefix)]


def test_every_member_of_a_multi_member_gzip_body_is_forwarded(world):
    """gzip(A) + gzip(B) is one valid gzip body (RFC 1952): both halves reach Kafka."""
    env, _collector, readers = world
    tag = uuid.uuid4().hex[:8]
    members = [gzip.compress(_good_request(f"{tag} member {i}")) for i in range(3)]
    status, _headers, answer = _post(env, "/v1/traces", b"".join(members), "application/x-protobuf",
                                     **{"Content-Encoding": "gzip"})
    assert status == 200, answer
    names = readers["otlp_spans"].wait(lambda _: (lambda n: len(n) >= 3 and n)(_spans_named(readers["otlp_spans"], tag)),
                                       what="the spans of all three gzip members")
    assert sorted(names) == [f"{tag} member {i}" for i in range(3)]


def test_multi_member_gzip_over_the_limit_or_with_garbage_is_refused_whole(world):
    env, _collector, readers = world
    tag = uuid.uuid4().hex[:8]
    good = gzip.compress(_good_request(f"{tag} first"))
    # The second member alone is under the limit; together they are not.
    bomb = good + gzip.compress(b"\0" * MAX_BODY)
    garbage = good + b"this is not a gzip member"
    for body, status in ((bomb, 413), (garbage, 400)):
        got, _headers, answer = _post(env, "/v1/traces", body, "application/x-protobuf",
                                      **{"Content-Encoding": "gzip"})
        assert got == status, answer
    ok, _headers, _answer = _post(env, "/v1/traces", _good_request(f"{tag} after"), "application/x-protobuf")
    assert ok == 200
    readers["otlp_spans"].wait(lambda _: f"{tag} after" in _spans_named(readers["otlp_spans"], tag),
                               what="the good request after the refused ones")
    assert _spans_named(readers["otlp_spans"], tag) == [f"{tag} after"]  # nothing half-read


@pytest.mark.parametrize("case", list(BAD_HTTP))
def test_bad_http_request_is_refused_and_dead_lettered(world, case):
    env, _collector, readers = world
    body, ctype, extra, status, reason = BAD_HTTP[case]
    before = reasons(readers["dlq"]).count(reason)
    got, _headers, answer = _post(env, "/v1/traces", body, ctype, **extra)
    assert got == status, answer
    assert answer  # a google.rpc.Status (or JSON) saying what was wrong
    readers["dlq"].wait(lambda _: reasons(readers["dlq"]).count(reason) > before,
                        what=f"a dead letter with reason {reason}")
    assert metric(f"{env.otlp_http}/metrics", "nimtrail_collector_rejected_inputs_total",
                  receiver="otlp_http/traces", reason=reason) >= 1
    # The collector keeps serving: a good request right after is accepted.
    ok, _headers, answer = _post(env, "/v1/traces", _good_request(f"after {case}"), "application/x-protobuf")
    assert ok == 200
    assert trace_service_pb2.ExportTraceServiceResponse.FromString(answer) == trace_service_pb2.ExportTraceServiceResponse()


def test_malformed_grpc_request_is_invalid_argument_and_dead_lettered(world):
    env, _collector, readers = world
    channel = grpc.insecure_channel(f"127.0.0.1:{env.ports['grpc']}")
    raw_export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    before = reasons(readers["dlq"]).count("malformed_protobuf")
    with pytest.raises(grpc.RpcError) as error:
        raw_export(b"\x0a\xff\xff\xff\xff\x0f not protobuf", timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    readers["dlq"].wait(lambda _: reasons(readers["dlq"]).count("malformed_protobuf") > before,
                        what="the malformed gRPC request in the dead-letter topic")
    letter = [m for m in readers["dlq"].poll() if headers(m)["nimtrail.reason"] == "malformed_protobuf"][-1]
    assert letter.value == b"\x0a\xff\xff\xff\xff\x0f not protobuf"  # untouched, replayable

    with pytest.raises(grpc.RpcError) as error:  # over max_body_bytes: refused by gRPC itself
        raw_export(os.urandom(MAX_BODY + 1024), timeout=10)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(_good_request("after bad gRPC"))
    assert stub.Export(request, timeout=10) == trace_service_pb2.ExportTraceServiceResponse()
    channel.close()


def test_spans_without_valid_ids_get_partial_success(world):
    env, _collector, readers = world
    tag = uuid.uuid4().hex[:8]
    doc = {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": [
        {"traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": f"good {tag}"},
        {"traceId": "00" * 16, "spanId": os.urandom(8).hex(), "name": f"zero trace {tag}"},
        {"traceId": os.urandom(16).hex(), "spanId": "abcd", "name": f"short span id {tag}"},
    ]}]}]}
    status, _headers, answer = _post(env, "/v1/traces", orjson.dumps(doc), "application/json")
    assert status == 200
    partial = orjson.loads(answer)["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 2 and "trace or span id" in partial["errorMessage"]

    def names(messages):
        return {s.name for m in messages
                for rs in trace_service_pb2.ExportTraceServiceRequest.FromString(m.value).resource_spans
                for ss in rs.scope_spans for s in ss.spans}

    readers["otlp_spans"].wait(lambda ms: f"good {tag}" in names(ms), what="the valid span")
    assert not {f"zero trace {tag}", f"short span id {tag}"} & names(readers["otlp_spans"].poll())
    letters = [m for m in readers["dlq"].wait(
        lambda ms: [m for m in ms if headers(m)["nimtrail.reason"] == "invalid_ids"
                    and f"zero trace {tag}".encode() in m.value], what="the rejected spans")]
    rejected = trace_service_pb2.ExportTraceServiceRequest.FromString(letters[-1].value)
    assert sorted(s.name for s in rejected.resource_spans[0].scope_spans[0].spans) == [
        f"short span id {tag}", f"zero trace {tag}"]
    assert isinstance(rejected.resource_spans[0].scope_spans[0].spans[0], trace_pb2.Span)


def test_a_request_the_broker_refuses_goes_to_the_dlq_and_the_next_ones_get_through(world):
    """Over the topic's max.message.bytes (below the collector's own limit): the request is
    kept (buffered, then dead-lettered once the broker refuses it alone), and the producer
    that the refusal stopped is replaced."""
    env, _collector, readers = world
    request = trace_service_pb2.ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    while request.ByteSize() < SPANS_TOPIC_LIMIT + 20_000:
        span = spans.add()
        span.trace_id, span.span_id, span.name = os.urandom(16), os.urandom(8), os.urandom(200).hex()
    big = request.SerializeToString()
    assert len(big) < MAX_BODY
    status, _headers, _answer = _post(env, "/v1/traces", big, "application/x-protobuf")
    assert status == 200  # durable: in the buffer now, in the dead-letter topic soon
    letter = readers["dlq"].wait(lambda ms: next((m for m in ms if headers(m)["nimtrail.reason"] == "kafka_refused"),
                                                 None), what="the refused request in the DLQ")
    assert letter.value == big
    for i in range(3):
        assert _post(env, "/v1/traces", _good_request(f"after refusal {i}"), "application/x-protobuf")[0] == 200

    def names(messages):
        return {s.name for m in messages
                for rs in trace_service_pb2.ExportTraceServiceRequest.FromString(m.value).resource_spans
                for ss in rs.scope_spans for s in ss.spans}

    readers["otlp_spans"].wait(lambda ms: {f"after refusal {i}" for i in range(3)} <= names(ms),
                               what="the requests after the refusal")
