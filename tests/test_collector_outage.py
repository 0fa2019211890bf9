"""Kafka goes away while clients keep sending, then comes back: every span the collector
acknowledged arrives, and what it did not acknowledge was answered with a retry hint
(429 / RESOURCE_EXHAUSTED when the buffer is full, 503 / UNAVAILABLE without a buffer).

This test runs its own broker: it stops and restarts it on the same data and port.
"""

from __future__ import annotations

import http.client
import os

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cli import broker
from tests.collector_support import TopicReader, metric, running
from tests.harness import Env, wait_for

SPANS_PER_REQUEST = 20


class Clients:
    """Four senders against one collector: the SDK's HTTP and gRPC exporters, and raw HTTP
    and gRPC clients that show the status codes. Records which span ids were acknowledged."""

    def __init__(self, env: Env):
        self.env = env
        self.acked: set[bytes] = set()
        self.answers: list[tuple[str, object, dict]] = []  # (client, status, retry hint)
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({"service.name": "outage-test"}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("outage")
        self.sdk_http = HttpSpanExporter(endpoint=f"{env.otlp_http}/v1/traces", timeout=2)
        self.sdk_grpc = GrpcSpanExporter(endpoint=f"127.0.0.1:{env.ports['grpc']}", insecure=True, timeout=2)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{env.ports['grpc']}")
        self.stub = trace_service_pb2_grpc.TraceServiceStub(self.channel)

    def _sdk_spans(self):
        self.memory.clear()
        for i in range(SPANS_PER_REQUEST):
            with self.tracer.start_as_current_span(f"span {i}"):
                pass
        return self.memory.get_finished_spans()

    @staticmethod
    def _request():
        request = trace_service_pb2.ExportTraceServiceRequest()
        spans = request.resource_spans.add().scope_spans.add().spans
        for i in range(SPANS_PER_REQUEST):
            span = spans.add()
            span.trace_id, span.span_id, span.name = os.urandom(16), os.urandom(8), f"raw {i}"
        return request

    def round(self) -> None:
        for exporter, name in ((self.sdk_http, "sdk_http"), (self.sdk_grpc, "sdk_grpc")):
            spans = self._sdk_spans()
            result = exporter.export(spans)
            self.answers.append((name, result, {}))
            if result == SpanExportResult.SUCCESS:
                self.acked |= {s.context.span_id.to_bytes(8, "big") for s in spans}

        request = self._request()
        conn = http.client.HTTPConnection("127.0.0.1", self.env.ports["http"], timeout=30)
        conn.request("POST", "/v1/traces", body=request.SerializeToString(),
                     headers={"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        response.read()
        conn.close()
        self.answers.append(("raw_http", response.status, {"Retry-After": response.getheader("Retry-After")}))
        if response.status == 200:
            self.acked |= {s.span_id for s in request.resource_spans[0].scope_spans[0].spans}

        request = self._request()
        try:
            self.stub.Export(request, timeout=30)
            self.answers.append(("raw_grpc", grpc.StatusCode.OK, {}))
            self.acked |= {s.span_id for s in request.resource_spans[0].scope_spans[0].spans}
        except grpc.RpcError as e:
            trailers = dict(e.trailing_metadata() or ())
            self.answers.append(("raw_grpc", e.code(), {"retryinfo": trailers.get("google.rpc.retryinfo-bin")}))

    def saw(self, client: str, status: object) -> list[dict]:
        return [hint for name, got, hint in self.answers if name == client and got == status]

    def close(self) -> None:
        self.sdk_http.shutdown()
        self.sdk_grpc.shutdown()
        self.channel.close()
        self.provider.shutdown()


def _delivered(reader: TopicReader) -> set[bytes]:
    return {s.span_id for m in reader.poll()
            for rs in trace_service_pb2.ExportTraceServiceRequest.FromString(m.value).resource_spans
            for ss in rs.scope_spans for s in ss.spans}


@pytest.mark.timeout(420)
def test_acknowledged_spans_survive_a_broker_outage(tmp_path):
    kafka_dir = tmp_path / "own-kafka"
    handle = broker.start(kafka_dir, port=0, timeout=180)
    try:
        for sub in ("buffered", "bare"):
            (tmp_path / sub).mkdir()
        buffered_env = Env(tmp_path / "buffered", handle.bootstrap,
                           collector={"ack_timeout": "1s", "buffer": {"max_bytes": 150_000, "segment_bytes": 65536}})
        bare_env = Env(tmp_path / "bare", handle.bootstrap, collector={"ack_timeout": "1s", "buffer": {"max_bytes": 0}})
        with running(buffered_env) as collector, running(bare_env):
            clients, bare = Clients(buffered_env), Clients(bare_env)
            for _ in range(3):
                clients.round()
            assert all(status in (SpanExportResult.SUCCESS, 200, grpc.StatusCode.OK)
                       for _name, status, _hint in clients.answers)

            broker.stop(kafka_dir)
            # Clients keep sending: first into the buffer, then told to come back later.
            for _ in range(200):
                clients.round()
                if clients.saw("raw_http", 429) and clients.saw("raw_grpc", grpc.StatusCode.RESOURCE_EXHAUSTED):
                    break
            bare.round()
            acked_during_outage = len(clients.acked) - 3 * 4 * SPANS_PER_REQUEST
            assert acked_during_outage > 0  # the buffer took some while Kafka was away
            assert clients.saw("raw_http", 429)[0]["Retry-After"] == "5"
            assert clients.saw("raw_grpc", grpc.StatusCode.RESOURCE_EXHAUSTED)[0]["retryinfo"]
            assert clients.saw("sdk_http", SpanExportResult.FAILURE)  # the SDK was not told "done"
            assert bare.saw("raw_http", 503)[0]["Retry-After"] == "5"
            assert bare.saw("raw_grpc", grpc.StatusCode.UNAVAILABLE)[0]["retryinfo"]
            assert metric(f"{buffered_env.otlp_http}/metrics", "nimtrail_collector_retry_later_requests_total",
                          receiver="otlp_http/traces", reason="buffer_full") >= 1

            broker.start(kafka_dir, port=handle.port, controller_port=handle.controller_port, timeout=180)
            wait_for(lambda: not collector.forwarder.buffering, timeout=120, what="the buffer to drain")
            for _ in range(3):
                clients.round()
            assert [status for _name, status, _hint in clients.answers[-12:]] == [
                SpanExportResult.SUCCESS, SpanExportResult.SUCCESS, 200, grpc.StatusCode.OK] * 3

            reader = TopicReader(handle.bootstrap, buffered_env.config.topics.otlp_spans)
            missing = wait_for(lambda: not (clients.acked - _delivered(reader)), timeout=120,
                               what="every acknowledged span in Kafka")
            assert missing
            assert metric(f"{buffered_env.otlp_http}/metrics", "nimtrail_collector_drained_messages_total") > 0
            reader.close()
            clients.close()
            bare.close()
    finally:
        broker.stop(kafka_dir)
