"""After a Kafka outage under steady load, the collector answers new requests from Kafka
again as soon as Kafka acknowledges, while its buffer drains beside them: no request is
refused once Kafka is back, and every accepted span reaches Kafka exactly once.

This test runs its own broker: it stops and restarts it on the same data and port.
"""

from __future__ import annotations

import collections
import http.client
import os
import threading

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from collector.buffer import DiskBuffer
from cli import broker
from tests.collector_support import TopicReader, counter, running
from tests.harness import Env, wait_for

SPANS_PER_REQUEST = 20
PADDING = b"p" * 32 * 1024  # ~33 KB requests: a few hundred fill more than one drain batch (8 MiB)
BUFFER_BYTES = 12 * 1024 * 1024
DRAIN_BATCH_BYTES = 8 * 1024 * 1024  # what the drainer reads at once (DiskBuffer.read)


def _request() -> tuple[trace_service_pb2.ExportTraceServiceRequest, set[bytes]]:
    request = trace_service_pb2.ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for i in range(SPANS_PER_REQUEST):
        span = spans.add()
        span.trace_id, span.span_id, span.name = os.urandom(16), os.urandom(8), f"steady {i}"
    attribute = spans[0].attributes.add()
    attribute.key, attribute.value.bytes_value = "padding", PADDING
    return request, {s.span_id for s in spans}


class SteadyLoad:
    """One raw OTLP/HTTP and one raw OTLP/gRPC client sending back to back, without
    retries. Each answer is kept with the phase the test was in when its request started."""

    def __init__(self, env: Env):
        self.env = env
        self.phase = "before"
        self.answers: list[tuple[str, str, bool, set[bytes]]] = []  # (phase, client, accepted, span ids)
        self.errors: list[Exception] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(send,), daemon=True)
                         for send in (self._http, self._grpc)]

    def _http(self, request) -> tuple[str, bool]:
        conn = http.client.HTTPConnection("127.0.0.1", self.env.ports["http"], timeout=60)
        try:
            conn.request("POST", "/v1/traces", body=request.SerializeToString(),
                         headers={"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            response.read()
            return "http", response.status == 200
        finally:
            conn.close()

    def _grpc(self, request) -> tuple[str, bool]:
        with grpc.insecure_channel(f"127.0.0.1:{self.env.ports['grpc']}") as channel:
            try:
                trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=60)
                return "grpc", True
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                    raise
                return "grpc", False

    def _loop(self, send) -> None:
        while not self._stop.is_set():
            phase = self.phase
            request, ids = _request()
            try:
                client, accepted = send(request)
            except (OSError, grpc.RpcError) as e:
                self.errors.append(e)  # the test fails on these, after stopping the collector
                return
            with self._lock:
                self.answers.append((phase, client, accepted, ids))
            if not accepted:
                # Told to retry later: pause as an exporter does (for less than the hint's 5 s),
                # instead of flooding the collector with requests it must refuse.
                self._stop.wait(0.2)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def count(self, phase: str, client: str | None = None) -> int:
        with self._lock:
            return sum(1 for p, c, _, _ in self.answers if p == phase and client in (None, c))

    def refused(self, *phases: str) -> list[tuple[str, str]]:
        with self._lock:
            return [(p, c) for p, c, accepted, _ in self.answers if p in phases and not accepted]

    def accepted_spans(self) -> set[bytes]:
        with self._lock:
            return {s for _, _, accepted, ids in self.answers if accepted for s in ids}


class HeldDrainer:
    """Holds the drainer just after its first batch since Kafka returned, so the test can
    look at the collector while Kafka is healthy and the buffer is not empty yet."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.first_batch_drained = threading.Event()
        self.release = threading.Event()
        commit = DiskBuffer.commit

        def held_commit(buffer: DiskBuffer, upto) -> None:
            commit(buffer, upto)
            self.first_batch_drained.set()
            self.release.wait(timeout=300)

        monkeypatch.setattr(DiskBuffer, "commit", held_commit)


def _delivered(reader: TopicReader) -> collections.Counter:
    return collections.Counter(
        s.span_id for m in reader.poll()
        for rs in trace_service_pb2.ExportTraceServiceRequest.FromString(m.value).resource_spans
        for ss in rs.scope_spans for s in ss.spans)


@pytest.mark.timeout(600)
def test_requests_go_to_kafka_directly_while_the_buffer_drains(tmp_path, monkeypatch):
    kafka_dir = tmp_path / "own-kafka"
    handle = broker.start(kafka_dir, port=0, timeout=180)
    held = HeldDrainer(monkeypatch)
    load = None
    try:
        env = Env(tmp_path, handle.bootstrap,
                  collector={"ack_timeout": "3s",
                             "buffer": {"max_bytes": BUFFER_BYTES, "segment_bytes": 1024 * 1024}})
        with running(env) as collector:
            def forwarded() -> float:
                return counter(collector, "nimtrail_collector_forwarded_items_total")

            def buffered() -> float:
                return counter(collector, "nimtrail_collector_buffered_items_total")

            def buffer_bytes() -> float:
                return counter(collector, "nimtrail_collector_buffer_bytes")

            load = SteadyLoad(env)
            load.start()
            wait_for(lambda: load.count("before", "http") >= 5 and load.count("before", "grpc") >= 5,
                     timeout=60, what="requests before the outage")
            assert not load.refused("before")

            load.phase = "outage"
            broker.stop(kafka_dir)
            # More than one drain batch waits on disk, so the drain is not over in one step.
            wait_for(lambda: buffer_bytes() > DRAIN_BATCH_BYTES + 1024 * 1024, timeout=180,
                     what="the buffer to take more than one drain batch")

            load.phase = "kafka_back"
            broker.start(kafka_dir, port=handle.port, controller_port=handle.controller_port, timeout=180)
            assert held.first_batch_drained.wait(timeout=180), "the drainer never reached Kafka again"

            # Kafka acknowledged the drainer: from here on Kafka is healthy. The drainer is held
            # with data still buffered; requests must go to Kafka directly meanwhile.
            load.phase = "healthy"
            wait_for(lambda: load.count("healthy", "http") and load.count("healthy", "grpc"), timeout=60,
                     what="a request of each client started after Kafka was back")
            # Counted by what the collector forwarded, not by answers the clients recorded: a
            # request is counted before its answer reaches the client, so the two differ by the
            # requests in flight.
            forwarded_before, buffered_before = forwarded(), buffered()
            wait_for(lambda: forwarded() - forwarded_before >= 20 * SPANS_PER_REQUEST, timeout=120,
                     what="requests forwarded to Kafka directly while the buffer waits")
            assert collector.forwarder.buffering  # the buffer has not drained yet
            assert buffered() == buffered_before  # nothing new went to the buffer
            assert not load.refused("healthy")

            load.phase = "draining"
            held.release.set()
            wait_for(lambda: not collector.forwarder.buffering, timeout=180, what="the buffer to drain")
            load.phase = "drained"
            wait_for(lambda: load.count("drained", "http") and load.count("drained", "grpc"), timeout=60,
                     what="requests after the drain")
            load.stop()
            assert load.errors == []
            assert not load.refused("healthy", "draining", "drained")
            assert buffered() == buffered_before  # Kafka stayed healthy: nothing buffered after its return

            accepted = load.accepted_spans()
            reader = TopicReader(handle.bootstrap, env.config.topics.otlp_spans)
            delivered = wait_for(lambda: (d := _delivered(reader)).keys() >= accepted and d, timeout=120,
                                 interval=1.0, what="every accepted span in Kafka")
            assert set(delivered) == accepted  # nothing refused got through
            assert [s for s, n in delivered.items() if n > 1] == []  # nothing twice
            reader.close()
    finally:
        held.release.set()
        if load is not None:
            load.stop()
        broker.stop(kafka_dir)
