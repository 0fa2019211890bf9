"""A NIM exporting its logs and metrics over OTLP, end to end on real components: the
OpenTelemetry SDK's log bridge (OTLP/HTTP) and meter (OTLP/gRPC) → collector → Kafka →
processor → warehouse → CLI. Garbage on the OTLP topics goes to the dead-letter topic and
the processor keeps going."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
import warnings

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from nimtrail import kafka_io
from tests import scenarios as sc
from tests.harness import Env, wait_for
from tests.kafka_util import headers, read_all

pytestmark = pytest.mark.integration
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f not an OTLP request"
NIM = {**sc.NIM_RESOURCE, "host.name": "gpu-node-1"}


def prepare(env: Env) -> None:
    """The deployment registered, and garbage on both OTLP topics ahead of the real data
    (an OpenTelemetry Collector's kafka exporter writes to them directly)."""
    t = env.config.topics
    kafka_io.ensure_topics(env.config, [t.otlp_logs, t.otlp_metrics], compacted=[t.deployments])
    producer = kafka_io.producer(env.config)
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    key, value = sc.deployment_message(sc.deployment("prod/llama-3-1-8b", 1, since))
    producer.send(t.deployments, key=key, value=value)
    producer.send(t.otlp_logs, value=GARBAGE)
    producer.send(t.otlp_metrics, value=GARBAGE)
    producer.flush()
    producer.close()


def send_nim_logs(endpoint: str, call_id: str) -> None:
    """What a NIM's Python logging emits through the SDK's log bridge: bare messages with
    their level and time beside them, and one line that is a whole NIM JSONL line."""
    provider = LoggerProvider(resource=Resource.create(NIM))
    # Batched, as a service exports its logs: an access line names no request, so it is
    # tied to the one request named since the previous access line of the same batch.
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{endpoint}/v1/logs",
                                                                              timeout=10),
                                                              schedule_delay_millis=3_600_000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger(f"vllm.{uuid.uuid4().hex[:6]}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.info("Received request %s: params: SamplingParams(n=1, temperature=0.2)", call_id)
        logger.info('10.28.1.7:49420 - "POST /v1/chat/completions HTTP/1.1" 200')
        logger.info("Finished request %s.", call_id)
        logger.info("Engine 000: Avg prompt throughput: 41.5 tokens/s, Avg generation throughput: 12.0 tokens/s, "
                    "Running: 1 reqs, Waiting: 0 reqs, GPU KV cache usage: 2.5%")
        logger.info(json.dumps({"level": "INFO", "time": "2026-03-03 12:00:10", "file_name": "nim.py",
                                "line_number": 7, "message": "NIM LLM API version 1.0.0"}))
        assert provider.force_flush(timeout_millis=20_000)
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


def send_nim_metrics(grpc_endpoint: str) -> None:
    """vLLM's latency histogram as an OpenTelemetry instrument (dotted name, unit apart)."""
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=grpc_endpoint, insecure=True, timeout=10),
                                           export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create(NIM), metric_readers=[reader])
    meter = provider.get_meter("vllm")
    ttft = meter.create_histogram("vllm.time_to_first_token", unit="s",
                                  explicit_bucket_boundaries_advisory=[0.05, 0.1, 0.25, 0.5, 1.0])
    running = meter.create_up_down_counter("vllm.num_requests_running")
    for seconds in (0.04, 0.08, 0.09, 0.2, 0.3, 0.7):
        ttft.record(seconds, {"model_name": sc.MODEL})
    running.add(2, {"model_name": sc.MODEL})
    try:
        assert provider.force_flush(timeout_millis=20_000)
    finally:
        provider.shutdown()


def cli_json(env: Env, *args: str) -> dict:
    result = env.cli(*args, "--json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 and result.stdout.strip() else {}


def test_nim_logs_and_metrics_over_otlp_reach_the_trail(env):
    prepare(env)
    for stage in ("warehouse", "processor", "collector"):
        env.start(stage)
    for stage in ("warehouse", "processor", "collector"):
        env.wait_ready(stage)
    call_id = f"chatcmpl-{uuid.uuid4().hex}"
    send_nim_logs(env.otlp_http, call_id)
    send_nim_metrics(f"127.0.0.1:{env.ports['grpc']}")

    def the_call():
        rows = cli_json(env, "calls").get("rows") or []
        row = next((r for r in rows if r["call_id"] == call_id), None)
        return row if row and row.get("ended_at") and row.get("client_address") else None

    call = wait_for(the_call, timeout=60, what="the call from the OTLP log lines")
    assert call["deployment_id"] == "prod/llama-3-1-8b" and call["deployment_version"] == 1
    assert call["client_address"] == "10.28.1.7" and call["http_status"] == 200
    assert call["started_at"] <= call["ended_at"]

    def latency():
        rows = cli_json(env, "latency", "--by", "profile", "--source", "metrics").get("rows") or []
        return rows if rows and rows[0].get("ttft_ms_n") else None

    [row] = wait_for(latency, timeout=60, what="TTFT percentiles from the OTLP histogram")
    assert (row["gpu_type"], row["profile_name"]) == ("H100", "vllm-bf16-tp1-pp1")
    assert row["ttft_ms_n"] == 6 and row["ttft_ms_source"] == "metrics"
    assert 100 <= row["ttft_ms_p50"] <= 250  # the 3rd and 4th of six fall in (0.1, 0.25]

    # Both garbage messages were dead-lettered by the processor, untouched, with a reason.
    dead = [m for m in read_all(env.config.kafka.bootstrap, env.config.topics.dlq, expect=2)
            if headers(m).get("nimtrail.stage") == "processor"]
    assert sorted(m.key.decode() for m in dead) == sorted(
        [env.config.topics.otlp_logs, env.config.topics.otlp_metrics])
    assert {headers(m)["nimtrail.reason"] for m in dead} == {"malformed_protobuf"}
    assert {m.value for m in dead} == {GARBAGE}
