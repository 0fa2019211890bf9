"""Spans placed by trace for a split join (processor.partitions): the collector sends each
trace's spans to the partition of the spans topic its trace id is placed in, so that the
member holding that partition of the evidence topic reads them and joins them without
passing them through the evidence topic (kafka_io.co_partitioned, docs/scale.md)."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from collector import otlp_codec
from nimtrail.kafka_io import partition_of
from tests import scenarios as sc
from tests.collector_support import TopicReader, running
from tests.harness import Env

T0 = dt.datetime(2026, 3, 1, 9, 0)
PARTITIONS = 6


def _world(runs: int) -> list:
    """`runs` agent runs' spans (each its own trace, three services), as the SDK made them."""
    world = sc.World()
    for i in range(runs):
        sc.agent_run(world, T0 + dt.timedelta(seconds=i), caller=f"user{i}")
    return world.take()


def _decoded(body: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def _placed_spans(request) -> Counter:
    """Every span with the resource and scope it is under (encoded, to compare)."""
    return Counter((r.resource.SerializeToString(), r.schema_url, s.scope.SerializeToString(), s.schema_url,
                    span.SerializeToString())
                   for r in request.resource_spans for s in r.scope_spans for span in s.spans)


def _traces(request) -> set[str]:
    return {span.trace_id.hex() for r in request.resource_spans for s in r.scope_spans for span in s.spans}


def test_a_request_of_many_traces_becomes_one_request_per_partition_they_are_placed_in():
    request = _decoded(sc.World.otlp(_world(12)))
    assert len(request.resource_spans) > 1  # the agent's, NIM's and the MCP server's

    parts = otlp_codec.split_by_trace(request, PARTITIONS)

    assert len(parts) > 1
    decoded = [(key.decode(), _decoded(body)) for key, body in parts]
    for key, part in decoded:  # each holds whole traces of one partition, keyed by one of them
        assert key in _traces(part)
        assert {partition_of(t, PARTITIONS) for t in _traces(part)} == {partition_of(key, PARTITIONS)}
    assert len({partition_of(key, PARTITIONS) for key, _ in decoded}) == len(parts)
    # Every span once, under its own resource and scope.
    assert sum((_placed_spans(part) for _, part in decoded), Counter()) == _placed_spans(request)


def test_a_request_whose_traces_are_placed_in_one_partition_goes_as_it_came():
    request = _decoded(sc.World.otlp(_world(1)))
    assert otlp_codec.split_by_trace(request, PARTITIONS) == []
    assert otlp_codec.split_by_trace(_decoded(sc.World.otlp(_world(12))), 1) == []


@pytest.mark.integration
def test_for_a_split_join_the_collector_sends_every_span_to_its_traces_partition(tmp_path, kafka_bootstrap):
    """Through the real collector over OTLP/HTTP and OTLP/gRPC (the SDK's exporters): the
    spans topic it creates has processor.partitions partitions, and every span of a
    request of many traces is read once, from its trace's partition."""
    env = Env(tmp_path, kafka_bootstrap, processor={"partitions": PARTITIONS})
    over_http, over_grpc = _world(10), _world(10)
    with running(env):
        sc.World.send(env.otlp_http, over_http)
        exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{env.ports['grpc']}", insecure=True, timeout=10)
        assert exporter.export(over_grpc).name == "SUCCESS"
        exporter.shutdown()
        reader = TopicReader(kafka_bootstrap, env.config.topics.otlp_spans)
        try:
            sent = len(over_http) + len(over_grpc)
            messages = reader.wait(lambda got: got if sum(len(_placed_spans(_decoded(m.value))) for m in got) >= sent
                                   else None, what="every span in the spans topic")
            assert len(reader.consumer.partitions_for_topic(env.config.topics.otlp_spans)) == PARTITIONS
        finally:
            reader.close()
    read = Counter()
    for message in messages:
        request = _decoded(message.value)
        assert {partition_of(t, PARTITIONS) for t in _traces(request)} == {message.partition}
        assert partition_of(message.key.decode(), PARTITIONS) == message.partition
        read.update(span.span_id for r in request.resource_spans for s in r.scope_spans for span in s.spans)
    assert sorted(read.values()) == [1] * (len(over_http) + len(over_grpc))
    assert len({m.partition for m in messages}) > 1
