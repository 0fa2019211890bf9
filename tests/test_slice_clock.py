"""Times from the far future, end to end on real components: a span dated 2554 (start time
2^64-2 ns, the largest an OTLP timestamp can say) and a NIM log line dated year 3000 go
through the collector, the processor and the warehouse; the query API and `nimtrail calls`
keep answering, the times stored are the pipeline's receive times, and a `clock_skew`
finding names what was sent."""

from __future__ import annotations

import json
import urllib.request
import uuid

import orjson
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from nimtrail import api_client
from tests.harness import wait_for

FAR_NS = 2**64 - 2  # 2554-07-21T23:34:33.709551614Z


def _send_far_span(endpoint: str, call_id: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "ops-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces",
                                                                      timeout=10)))
    span = provider.get_tracer("agent").start_span(
        "chat meta/llama-3.1-8b-instruct", kind=SpanKind.CLIENT, start_time=FAR_NS,
        attributes={"gen_ai.operation.name": "chat", "gen_ai.response.id": call_id,
                    "gen_ai.request.model": "meta/llama-3.1-8b-instruct", "enduser.id": "mallory"})
    span.end(end_time=FAR_NS + 1)
    provider.force_flush()
    provider.shutdown()


def _post_year_3000_lines(endpoint: str, call_id: str) -> None:
    lines = [{"level": "INFO", "time": "3000-01-01 00:00:00", "file_name": "serving_chat.py",
              "line_number": 10, "message": f"Received request {call_id}: prompt: 'hi', params: x"},
             {"level": "INFO", "time": "3000-01-01 00:00:01", "file_name": "async_llm.py",
              "line_number": 20, "message": f"Finished request {call_id}."}]
    request = urllib.request.Request(f"{endpoint}/v1/nimlogs?source=prod/llama",
                                     data=b"\n".join(orjson.dumps(line) for line in lines),
                                     method="POST", headers={"Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def test_far_future_times_are_clamped_and_every_query_answers(env):
    for stage in ("warehouse", "processor", "collector"):
        env.start(stage)
    for stage in ("warehouse", "processor", "collector"):
        env.wait_ready(stage)
    span_call, log_call = f"chatcmpl-{uuid.uuid4().hex}", f"chatcmpl-{uuid.uuid4().hex}"
    _send_far_span(env.otlp_http, span_call)
    _post_year_3000_lines(env.otlp_http, log_call)

    def both_stored():
        found = api_client.query(env.api, "calls", {"limit": 10})
        ids = {r["call_id"] for r in found["rows"]}
        return found if {span_call, log_call} <= ids else None

    answer = wait_for(both_stored, timeout=90, what="both calls in the warehouse")
    rows = {r["call_id"]: r for r in answer["rows"]}
    for call_id in (span_call, log_call):
        assert rows[call_id]["started_at"] < "2100", rows[call_id]  # the receive time instead

    # Later requests keep answering, through the API and the CLI.
    for _ in range(2):
        assert api_client.query(env.api, "calls", {"limit": 1})["rows"]
    result = env.cli("calls", check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(env.cli("calls", "--json").stdout)["rows"]

    def skew_findings():
        found = api_client.query(env.api, "findings", {"kind": "clock_skew", "group": "false"})
        subjects = {s for f in found["rows"] for s in f["subject_ids"]}
        return found["rows"] if {span_call, log_call} <= subjects else None

    findings = wait_for(skew_findings, timeout=60, what="clock_skew findings on both calls")
    sent = {(f["detail"]["record"], f["detail"]["field"], f["detail"]["sent"]) for f in findings}
    assert ("span", "started_at", str(FAR_NS)) in sent  # the span's raw nanoseconds, as sent
    assert ("span", "ended_at", str(FAR_NS + 1)) in sent
    assert sum(1 for record, field, value in sent
               if (record, field) == ("log_line", "time") and value.startswith("3000-01-01")) == 2
    assert all(f["severity"] == "low" and f["detail"]["stored"] < "2100" for f in findings)
