"""TLS and mutual TLS on both collector listeners: the real OTel SDK exporters with
certificate settings get through to Kafka (named by their certificate); a client without
a certificate, with one from another CA, or speaking plain text is refused."""

from __future__ import annotations

import http.client
import socket
import ssl
import uuid

import grpc
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from nimtrail import config as config_mod
from nimtrail.errors import ConfigError
from tests.collector_support import TopicReader, counter, headers, running
from tests.harness import Env
from tests.tls_support import CLIENT_NAME, make_pki


@pytest.fixture(scope="module")
def world(tmp_path_factory, kafka_bootstrap):
    tmp = tmp_path_factory.mktemp("tls")
    pki = make_pki(tmp / "pki")
    env = Env(tmp, kafka_bootstrap, collector={"tls": {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "client_ca_file": str(pki.ca)}})
    spans = TopicReader(kafka_bootstrap, env.config.topics.otlp_spans)
    with running(env) as collector:
        yield env, collector, pki, spans
    spans.close()


@pytest.fixture(autouse=True)
def _no_ca_bundle_override(monkeypatch):
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's `verify`, so
    where they are set the HTTP exporter's certificate_file is ignored (docs/deploy.md)."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def _span(tag: str):
    provider = TracerProvider(resource=Resource.create({"service.name": f"svc-{tag}"}))
    with provider.get_tracer("test").start_as_current_span(f"span-{tag}") as span:
        pass
    return span


def _delivered(spans: TopicReader, tag: str):
    return spans.wait(lambda ms: [m for m in ms if f"span-{tag}".encode() in m.value], what=f"span-{tag}")


def test_http_exporter_with_client_certificate_reaches_kafka(world):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    env, _collector, pki, spans = world
    tag = uuid.uuid4().hex[:12]
    exporter = OTLPSpanExporter(endpoint=f"https://127.0.0.1:{env.ports['http']}/v1/traces",
                                certificate_file=str(pki.ca), client_certificate_file=str(pki.client_cert),
                                client_key_file=str(pki.client_key), timeout=10)
    assert exporter.export([_span(tag)]) == SpanExportResult.SUCCESS
    exporter.shutdown()
    # With mutual TLS and no tokens, the certificate's common name names the sender.
    assert headers(_delivered(spans, tag)[0])["nimtrail.sender"] == CLIENT_NAME


def test_grpc_exporter_with_client_certificate_reaches_kafka(world):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    env, _collector, pki, spans = world
    tag = uuid.uuid4().hex[:12]
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes(),
                                               private_key=pki.client_key.read_bytes(),
                                               certificate_chain=pki.client_cert.read_bytes())
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{env.ports['grpc']}", credentials=credentials, timeout=10)
    assert exporter.export([_span(tag)]) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert headers(_delivered(spans, tag)[0])["nimtrail.sender"] == CLIENT_NAME


def test_clients_without_a_trusted_certificate_are_refused(world):
    env, collector, pki, spans = world
    url = f"https://127.0.0.1:{env.ports['http']}/v1/traces"
    body = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()
    before = counter(collector, "nimtrail_collector_unauthenticated_requests_total",
                     receiver="http", reason="tls_handshake")
    for cert in (None, (str(pki.rogue_cert), str(pki.rogue_key))):
        with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
            requests.post(url, data=body, headers={"Content-Type": "application/x-protobuf"},
                          verify=str(pki.ca), cert=cert, timeout=10)
    # The SDK exporter with only the CA (no client certificate) fails too.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=url, certificate_file=str(pki.ca), timeout=2)
    assert exporter.export([_span("no-cert")]) == SpanExportResult.FAILURE
    exporter.shutdown()
    assert counter(collector, "nimtrail_collector_unauthenticated_requests_total",
                   receiver="http", reason="tls_handshake") >= before + 3

    # Plain HTTP on the TLS port gets no answer at all.
    conn = http.client.HTTPConnection("127.0.0.1", env.ports["http"], timeout=10)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", "/healthz")
        conn.getresponse()
    conn.close()

    # gRPC: no client certificate, or plain text: the call never reaches the service.
    request = trace_service_pb2.ExportTraceServiceRequest()
    channels = [grpc.secure_channel(f"127.0.0.1:{env.ports['grpc']}",
                                    grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())),
                grpc.insecure_channel(f"127.0.0.1:{env.ports['grpc']}")]
    for channel in channels:
        with channel:
            with pytest.raises(grpc.RpcError) as refused:
                trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not [m for m in spans.poll() if b"no-cert" in m.value]


def test_healthz_over_tls_with_a_client_certificate(world):
    env, _collector, pki, _spans = world
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    conn = http.client.HTTPSConnection("127.0.0.1", env.ports["http"], context=context, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    conn.close()


def test_a_tcp_probe_is_not_counted_as_a_refusal(world):
    env, collector, _pki, _spans = world
    before = counter(collector, "nimtrail_collector_unauthenticated_requests_total", reason="tls_handshake")
    socket.create_connection(("127.0.0.1", env.ports["http"]), timeout=5).close()
    # The server is still serving (and the probe did not count) once a real handshake answers.
    test_healthz_over_tls_with_a_client_certificate(world)
    assert counter(collector, "nimtrail_collector_unauthenticated_requests_total",
                   reason="tls_handshake") == before


def test_tls_keys_are_validated(tmp_path):
    path = tmp_path / "c.yaml"
    for text, key in [("collector: {tls: {cert_file: /x.pem}}", "collector.tls.key_file"),
                      ("collector: {tls: {client_ca_file: /ca.pem}}", "collector.tls.client_ca_file"),
                      ("collector: {tls: {cert_file: /x.pem, key_file: /x.key, ciphers: x}}",
                       "collector.tls.ciphers")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config_mod.load(path, env={})
    # Files that cannot be used stop the collector at start, naming the key.
    from collector import tls
    missing = config_mod.TlsConfig(cert_file=str(tmp_path / "none.pem"), key_file=str(tmp_path / "none.key"))
    with pytest.raises(ConfigError, match="collector.tls.cert_file"):
        tls.server_context(missing)
