"""Ingestion tokens: with collector.auth.tokens_file set, OTLP/HTTP, /v1/nimlogs and
OTLP/gRPC refuse requests without a known bearer token (401 + WWW-Authenticate /
UNAUTHENTICATED), count them, and keep nothing of them; the real OTel SDK exporters with
a token get through to Kafka, their sender named in a header."""

from __future__ import annotations

import hashlib
import http.client
import uuid

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from collector import auth
from nimtrail.errors import ConfigError
from tests.collector_support import TopicReader, counter, headers, running
from tests.harness import Env, wait_for

NIM_TOKEN = "nim-" + "a1" * 16
SHIPPER_TOKEN = "shipper-" + "b2" * 16
WRONG_TOKEN = "wrong-" + "c3" * 16


def _request(tag: str) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    spans = request.resource_spans.add()
    attr = spans.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", f"svc-{tag}"
    span = spans.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = uuid.uuid4().bytes, b"\x02" * 8, f"span-{tag}"
    return request


def _post(env: Env, path: str, body: bytes, ctype: str, token: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", env.ports["http"], timeout=10)
    hdrs = {"Content-Type": ctype}
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    conn.request("POST" if body is not None else "GET", path, body=body, headers=hdrs)
    response = conn.getresponse()
    result = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory, kafka_bootstrap):
    tmp = tmp_path_factory.mktemp("auth")
    tokens = tmp / "ingest-tokens.yaml"
    tokens.write_text(f'"{NIM_TOKEN}": nim-llama\n'
                      f'"sha256:{hashlib.sha256(SHIPPER_TOKEN.encode()).hexdigest()}": fluent-bit\n')
    env = Env(tmp, kafka_bootstrap, collector={"auth": {"tokens_file": str(tokens), "protect_metrics": True}})
    t = env.config.topics
    readers = {name: TopicReader(kafka_bootstrap, getattr(t, name)) for name in ("otlp_spans", "nimlogs", "dlq")}
    with running(env) as collector:
        yield env, collector, readers, tokens
    for reader in readers.values():
        reader.close()


def test_token_file_shapes_and_mistakes(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# one per line\n{NIM_TOKEN}\n\n  {SHIPPER_TOKEN}  \n")
    book = auth.read_tokens(path)
    assert [d for d, _ in book] == [hashlib.sha256(t.encode()).digest() for t in (NIM_TOKEN, SHIPPER_TOKEN)]
    assert all(name.startswith("token-") and NIM_TOKEN not in name for _, name in book)
    path.write_text(f"{NIM_TOKEN}: nim-llama\n")
    assert auth.read_tokens(path)[0][1] == "nim-llama"
    for text, message in [("short\n", "at least 16"), ("# nothing\n", "no tokens"),
                          ("'sha256:abc': x\n", "64 hex digits"), (f"{NIM_TOKEN}: [a]\n", "must be a string")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            auth.read_tokens(path)


def test_unauthenticated_requests_are_refused_counted_and_not_kept(world):
    env, collector, readers, _tokens = world
    tag = uuid.uuid4().hex[:12]
    body = _request(f"stranger-{tag}").SerializeToString()

    status, hdrs, _ = _post(env, "/v1/traces", body, "application/x-protobuf")
    assert status == 401 and hdrs["WWW-Authenticate"] == 'Bearer realm="nimtrail"'
    status, hdrs, _ = _post(env, "/v1/traces", body, "application/x-protobuf", WRONG_TOKEN)
    assert status == 401 and 'error="invalid_token"' in hdrs["WWW-Authenticate"]
    status, _, _ = _post(env, f"/v1/nimlogs?source=stranger-{tag}", b"a line\n", "text/plain")
    assert status == 401
    with grpc.insecure_channel(f"127.0.0.1:{env.ports['grpc']}") as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Export(_request(f"stranger-{tag}"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused:
            stub.Export(_request(f"stranger-{tag}"), metadata=[("authorization", f"Basic {NIM_TOKEN}")],
                        timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # /healthz stays open; /metrics needs a token here (protect_metrics).
    assert _post(env, "/healthz", None, "")[0] == 200
    assert _post(env, "/metrics", None, "")[0] == 401
    status, _, text = _post(env, "/metrics", None, "", SHIPPER_TOKEN)
    assert status == 200 and b"nimtrail_collector_unauthenticated_requests_total" in text

    assert counter(collector, "nimtrail_collector_unauthenticated_requests_total",
                   receiver="otlp_http/traces", reason="missing_token") >= 1
    assert counter(collector, "nimtrail_collector_unauthenticated_requests_total",
                   receiver="otlp_http/traces", reason="unknown_token") >= 1
    assert counter(collector, "nimtrail_collector_unauthenticated_requests_total",
                   receiver="http_logs", reason="missing_token") >= 1
    assert counter(collector, "nimtrail_collector_unauthenticated_requests_total",
                   receiver="otlp_grpc/traces", reason="missing_token") >= 1
    assert counter(collector, "nimtrail_collector_unauthenticated_requests_total",
                   receiver="otlp_grpc/traces", reason="not_bearer") >= 1

    # Every request is durable before its answer, so once an authenticated marker is in
    # Kafka anything of the refused ones would be there too: nothing is, in either topic.
    marker = _request(f"marker-{tag}")
    assert _post(env, "/v1/traces", marker.SerializeToString(), "application/x-protobuf", NIM_TOKEN)[0] == 200
    assert _post(env, "/v1/traces", b"\xff not protobuf", "application/x-protobuf", NIM_TOKEN)[0] == 400
    spans = readers["otlp_spans"].wait(lambda ms: [m for m in ms if f"marker-{tag}".encode() in m.value],
                                       what="the authenticated marker")
    dlq = readers["dlq"].wait(lambda ms: [m for m in ms if m.value == b"\xff not protobuf"],
                              what="the authenticated bad request in the DLQ")
    assert headers(spans[0])["nimtrail.sender"] == "nim-llama"
    assert not [m for m in readers["otlp_spans"].poll() if b"stranger-" + tag.encode() in m.value]
    assert not [m for m in readers["dlq"].poll() if b"stranger-" + tag.encode() in m.value]
    assert len(readers["dlq"].poll()) == len(dlq)  # only the authenticated bad request
    assert not [m for m in readers["nimlogs"].poll() if f"stranger-{tag}".encode() in (m.key or b"")]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sdk_exporters_with_a_token_reach_kafka_named(world, protocol):
    env, collector, readers, _tokens = world
    tag = uuid.uuid4().hex[:12]
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        endpoint = f"{env.otlp_http}/v1/traces"
        good = OTLPSpanExporter(endpoint=endpoint, headers={"Authorization": f"Bearer {NIM_TOKEN}"}, timeout=10)
        bad = OTLPSpanExporter(endpoint=endpoint, headers={"Authorization": f"Bearer {WRONG_TOKEN}"}, timeout=10)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        endpoint = f"127.0.0.1:{env.ports['grpc']}"
        good = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10,
                                headers={"authorization": f"Bearer {NIM_TOKEN}"})
        bad = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10)
    receiver = f"otlp_{protocol}/traces"
    before = counter(collector, "nimtrail_collector_unauthenticated_requests_total", receiver=receiver)

    provider = TracerProvider(resource=Resource.create({"service.name": f"svc-{tag}"}))
    provider.add_span_processor(SimpleSpanProcessor(good))
    with provider.get_tracer("test").start_as_current_span(f"good-{tag}"):
        pass
    provider.shutdown()
    found = readers["otlp_spans"].wait(lambda ms: [m for m in ms if f"good-{tag}".encode() in m.value],
                                       what=f"the {protocol} exporter's span")
    assert headers(found[0])["nimtrail.sender"] == "nim-llama"

    # The SDK exporter hears the refusal (not retried: 401 / UNAUTHENTICATED are final).
    provider = TracerProvider(resource=Resource.create({"service.name": f"svc-{tag}"}))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(f"bad-{tag}") as span:
        pass
    assert bad.export([span]) == SpanExportResult.FAILURE
    bad.shutdown()
    assert counter(collector, "nimtrail_collector_unauthenticated_requests_total", receiver=receiver) == before + 1


def test_log_shipper_token_and_rotation(world):
    env, collector, readers, tokens = world
    tag = uuid.uuid4().hex[:12]
    status, _, _ = _post(env, f"/v1/nimlogs?source=prod/llama-{tag}", b"first line\n", "text/plain", SHIPPER_TOKEN)
    assert status == 200
    found = readers["nimlogs"].wait(lambda ms: [m for m in ms if m.key == f"prod/llama-{tag}".encode()],
                                    what="the shipper's batch")
    assert headers(found[0])["nimtrail.sender"] == "fluent-bit"

    # Rotation: the secret is rewritten with a new token; the old one stops working.
    rotated = "rotated-" + uuid.uuid4().hex * 2
    original = tokens.read_text()
    tokens.write_text(f'"{NIM_TOKEN}": nim-llama\n"{rotated}": fluent-bit-2\n')
    try:
        wait_for(lambda: _post(env, f"/v1/nimlogs?source=rotated-{tag}", b"x\n", "text/plain", rotated)[0] == 200,
                 10, what="the rotated token to be accepted")
        assert _post(env, f"/v1/nimlogs?source=old-{tag}", b"x\n", "text/plain", SHIPPER_TOKEN)[0] == 401
        # A broken rewrite keeps the tokens that worked (the file is checked as requests come).
        tokens.write_text("short\n")

        def reported_and_still_accepted() -> bool:
            ok = _post(env, f"/v1/nimlogs?source=rotated-{tag}", b"x\n", "text/plain", rotated)[0] == 200
            return ok and counter(collector, "nimtrail_collector_token_reloads_total", outcome="invalid") > 0

        wait_for(reported_and_still_accepted, 10, what="the invalid tokens file to be reported")
    finally:
        tokens.write_text(original)
        wait_for(lambda: _post(env, "/v1/nimlogs?source=restore", b"x\n", "text/plain", SHIPPER_TOKEN)[0] == 200,
                 10, what="the original tokens to be back")
