"""Normalisers, one input shape at a time (pure; spans built with the real OTel SDK)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from opentelemetry.trace import SpanKind

from nimtrail import raw, records
from nimtrail.config import ContentConfig
from nimtrail.errors import PermanentError
from processors import evidence as ev, nimlogs, normalize, scrapes, spans
from processors.content import ContentPolicy, digest
from tests import scenarios as sc

T = dt.datetime(2026, 3, 3, 12, 0, 0, tzinfo=dt.timezone.utc)
POLICY = ContentPolicy()


def one_span(name: str, attrs: dict, *, kind=SpanKind.INTERNAL, service: str = "svc", seconds: float = 0.5,
             policy: ContentPolicy = POLICY, **resource):
    world = sc.World()
    span = world.tracer(service, **resource).start_span(name, kind=kind, start_time=sc.ns(T), attributes=attrs)
    span.end(end_time=sc.ns(T + dt.timedelta(seconds=seconds)))
    found = list(spans.evidence_from_request(sc.World.otlp(world.take()), policy))
    return found[0] if found else None


def test_vllm_llm_request_translates_private_and_deprecated_names():
    item = one_span("llm_request", {
        "gen_ai.request.id": "chatcmpl-1", "gen_ai.response.model": "m",
        "gen_ai.usage.prompt_tokens": 11, "gen_ai.usage.completion_tokens": 7,
        "gen_ai.latency.time_in_queue": 0.004, "gen_ai.latency.time_in_model_prefill": 0.05,
        "gen_ai.latency.time_in_model_decode": 0.25}, kind=SpanKind.SERVER, service="nim-llama",
        **{"k8s.namespace.name": "prod", "k8s.deployment.name": "llama", "k8s.pod.name": "llama-7d-x"})
    assert (item.kind, item.key, item.source) == (ev.MODEL_CALL, "chatcmpl-1", ev.SPAN_NIM)
    f = item.fields
    assert (f["input_tokens"], f["output_tokens"]) == (11, 7)
    # No TTFT / e2e attributes: derived from the phases, in milliseconds.
    assert (f["queue_ms"], f["ttft_ms"], f["e2e_ms"]) == (4.0, 54.0, 304.0)
    assert set(f["identities"]) == {"k8s:prod/llama", "pod:prod/llama-7d-x", "svc:nim-llama", "model:m"}


@pytest.mark.parametrize("operation,expected", [("chat", "chat"), ("text_completion", "completion"),
                                                ("embeddings", "embeddings")])
def test_genai_client_spans_old_and_new_conventions(operation, expected):
    item = one_span(f"{operation} m", {
        "gen_ai.operation.name": operation, "gen_ai.system": "openai", "gen_ai.request.model": "m",
        "gen_ai.response.id": "cmpl-9", "gen_ai.usage.prompt_tokens": 5, "gen_ai.usage.completion_tokens": 2,
        "server.address": "llama.nim.svc", "server.port": 8000, "user.id": "dave"},
        kind=SpanKind.CLIENT, service="billing")
    f = item.fields
    assert (item.source, f["operation"], f["provider"]) == (ev.SPAN_CLIENT, expected, "openai")
    assert (f["input_tokens"], f["output_tokens"], f["caller"], f["client_service"]) == (5, 2, "dave", "billing")
    assert "hp:llama.nim.svc:8000" in f["identities"]


def test_tool_call_ids_from_output_messages_or_flattened_response_attributes():
    parts = one_span("chat m", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.response.id": "c1",
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
            {"type": "tool_call", "id": "call-a", "name": "lookup", "arguments": {"q": 1}},
            {"type": "tool_call", "id": "call-b", "name": "delete_record"}]}])}, kind=SpanKind.CLIENT)
    assert parts.fields["tool_call_ids"] == ["call-a", "call-b"]
    assert parts.fields["tool_names"] == ["lookup", "delete_record"]
    flat = one_span("chat m", {
        "gen_ai.operation.name": "chat", "gen_ai.response.id": "c2",
        "gen_ai.completion.0.tool_calls.0.id": "call-x", "gen_ai.completion.0.tool_calls.0.name": "lookup"},
        kind=SpanKind.CLIENT)
    assert (flat.fields["tool_call_ids"], flat.fields["tool_names"]) == (["call-x"], ["lookup"])


def test_content_is_hashed_always_and_kept_only_when_configured_redacted():
    prompt = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "mail eve@example.com"}]}])
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.response.id": "c3", "gen_ai.input.messages": prompt}
    default = one_span("chat m", attrs, kind=SpanKind.CLIENT)
    assert default.fields["prompt_text"] is None
    # The hash is of the canonical form: the same messages serialised differently hash the same.
    assert default.fields["prompt_sha256"] == digest(json.loads(prompt)) == digest(json.dumps(json.loads(prompt), indent=2))
    keep = one_span("chat m", attrs, kind=SpanKind.CLIENT, policy=ContentPolicy(ContentConfig(keep_prompts=True)))
    assert "eve@example.com" not in keep.fields["prompt_text"] and "[REDACTED:email]" in keep.fields["prompt_text"]


def test_redaction_covers_keys_tokens_emails_cards_and_extra_patterns():
    policy = ContentPolicy(ContentConfig(redact_patterns=(r"ORD-\d+",)))
    text = policy.redact("key nvapi-AAAAAAAAAAAAAAAAAAAAAA, Authorization: Bearer abcdefgh.ijklmnop, "
                         "a@b.io, card 4111-1111-1111-1111, {\"password\": \"hunter22\"}, order ORD-991, "
                         "not a card 1234 5678 9012 3456")
    for secret in ("nvapi-A", "abcdefgh", "a@b.io", "4111", "hunter22", "ORD-991"):
        assert secret not in text
    assert "1234 5678 9012 3456" in text  # fails the Luhn check: not a card number


def test_execute_tool_mcp_client_and_server_spans():
    tool = one_span("execute_tool delete_record", {
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "delete_record",
        "gen_ai.tool.call.id": "call-a", "gen_ai.tool.call.arguments": '{"id": 42}',
        "nimtrail.approval.gate": "policy", "error.type": "PermissionDenied"})
    assert (tool.kind, tool.fields["tool_call_id"], tool.fields["outcome"]) == (ev.TOOL_ACTION, "call-a", "error")
    assert tool.fields["arguments_sha256"] == digest({"id": 42}) and tool.fields["arguments"] is None
    client = one_span("tools/call delete_record", {
        "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool", "mcp.session.id": "s",
        "jsonrpc.request.id": "3", "server.address": "crm-mcp.tools.svc", "server.port": 8080},
        kind=SpanKind.CLIENT)
    assert (client.kind, client.source, client.fields["tool_name"]) == (ev.MCP, ev.SPAN_MCP_CLIENT, "delete_record")
    assert client.fields["mcp_server"] == "crm-mcp.tools.svc:8080"
    server = one_span("tools/call delete_record", {"mcp.method.name": "tools/call", "jsonrpc.request.id": "3"},
                      kind=SpanKind.SERVER, service="crm-mcp")
    assert (server.source, server.fields["mcp_server"]) == (ev.SPAN_MCP_SERVER, "crm-mcp")
    assert one_span("tools/list", {"mcp.method.name": "tools/list"}, kind=SpanKind.CLIENT) is None


def _lines(*texts: str, **kw) -> nimlogs.NimlogResult:
    doc = raw.decode(sc.nimlog_message(list(texts), received=T, **kw), raw.NIMLOGS_REQUIRED)
    return nimlogs.normalise(doc, POLICY)


def test_nim_log_generations_and_text_lines_become_call_evidence():
    result = _lines(
        '{"level":"INFO","time":"2026-03-03 11:59:00","file_name":"a.py","line_number":1,'
        '"message":"Received request chatcmpl-2x: params: SamplingParams(n=1), prompt_token_ids: [1, 2]"}',
        '{"level": "INFO", "time": "03-03 11:59:01.250", "file_path": "/x/b.py", "line_number": "9", '
        '"message": "Finished request chatcmpl-2x.", "exc_info": "None", "stack_info": "None"}',
        "INFO 03-03 11:59:02 logger.py:36] Received request chat-1a: prompt: 'my key is sk-abcdefghijklmnopqrstu', "
        "params: SamplingParams(n=1), prompt_token_ids: [5], lora_request: None.",
        "2026-11-26T11:59:03.123456789Z stderr F INFO 2026-03-03 11:59:03.000 engine.py:5] Aborted request chat-1a")
    by_line = [(e.key, e.source, e.fields) for e in result.evidence]
    assert [k for k, _, _ in by_line] == ["chatcmpl-2x", "chatcmpl-2x", "chat-1a", "chat-1a"]
    assert by_line[0][2]["started_at"] == "2026-03-03T11:59:00.000000Z" and by_line[0][2]["input_tokens"] == 2
    assert by_line[1][2]["ended_at"] == "2026-03-03T11:59:01.250000Z"  # 1.x: no year, taken from receipt
    assert by_line[2][2]["prompt_sha256"] == digest("my key is sk-abcdefghijklmnopqrstu")
    assert by_line[3][2]["status"] == "aborted"
    assert by_line[3][2]["ended_at"] == "2026-11-26T11:59:03.123456Z"  # the runtime's clock wins
    assert all(f["identities"] == ["dep:prod/llama-3-1-8b"] for _, _, f in by_line)
    assert result.counts == {"request": 4}


def test_access_lines_tie_only_when_unambiguous_and_health_probes_are_counted():
    result = _lines(
        "INFO 03-03 11:00:00 logger.py:1] Received request chatcmpl-a: params: x",
        "INFO 03-03 11:00:01 logger.py:2] Finished request chatcmpl-a.",
        'INFO:     10.1.2.3:5555 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
        "INFO 03-03 11:00:02 logger.py:1] Received request chatcmpl-b: params: x",
        "INFO 03-03 11:00:02 logger.py:1] Received request chatcmpl-c: params: x",
        'INFO:     10.1.2.4:5556 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
        'INFO:     10.1.2.5:5557 - "GET /v1/health/ready HTTP/1.1" 200 OK')
    tied = [e for e in result.evidence if e.source == ev.LOG_ACCESS]
    assert [(e.key, e.fields["client_address"], e.fields["http_status"]) for e in tied] == [
        ("chatcmpl-a", "10.1.2.3", 200)]
    assert [x["client_address"] for x in result.log_events["events"]] == ["10.1.2.4"]  # two candidates
    assert result.counts["health"] == 1 and result.counts["access_tied"] == 1


def test_stats_startup_and_unparseable_lines():
    result = _lines(
        "INFO 03-03 11:00:05 loggers.py:9] Engine 000: Avg prompt throughput: 10.0 tokens/s, Avg generation "
        "throughput: 99.5 tokens/s, Running: 3 reqs, Waiting: 1 reqs, GPU KV cache usage: 12.5%, "
        "Prefix cache hit rate: 50.0%",
        "INFO 03-03 10:00:00 ngc_injector.py:141] Selected profile: " + "b" * 64 + " (vllm-fp16-tp1)",
        "INFO 03-03 10:00:00 ngc_injector.py:142] Profile metadata: llm_engine: vllm",
        "INFO 03-03 10:00:00 ngc_injector.py:142] Profile metadata: tp: 1",
        "2026-03-03 10:00:01,645 [WARNING] [TRT-LLM] [W] engine text",
        "\x1b[0m not a log line")
    samples = {s["metric"]: s for s in result.samples}
    assert samples["nim_log:gpu_kv_cache_usage_ratio"]["value"] == 0.125
    assert samples["nim_log:waiting_requests"]["value"] == 1.0
    assert samples["nim_log:avg_generation_throughput_tokens_per_second"]["labels"]["engine"] == "000"
    assert len({s["sample_id"] for s in result.samples}) == len(result.samples) == 6
    facts = result.observation["facts"]
    assert (facts["profile_id"], facts["profile_name"]) == ("b" * 64, "vllm-fp16-tp1")
    assert facts["profile_tags"] == {"llm_engine": "vllm", "tp": "1"}
    assert result.observation["deployment"] == "prod/llama-3-1-8b"
    assert result.counts["unparsed"] == 1 and result.counts["other"] == 1
    assert result.log_events["events"][0]["text"] == "\x1b[0m not a log line"


def test_scrape_histograms_become_one_sample_with_buckets_and_ids_are_stable():
    message = sc.scrape_message("http://llama:8000/v1/metrics", T, [
        {"name": "vllm:time_to_first_token_seconds_bucket", "labels": {"model_name": "m", "le": le},
         "value": c, "timestamp": None} for le, c in (("0.5", 3.0), ("0.05", 1.0), ("+Inf", 4.0))] + [
        {"name": "vllm:time_to_first_token_seconds_sum", "labels": {"model_name": "m"}, "value": 0.9, "timestamp": None},
        {"name": "vllm:time_to_first_token_seconds_count", "labels": {"model_name": "m"}, "value": 4.0, "timestamp": None},
        {"name": "vllm:num_requests_running", "labels": {"model_name": "m"}, "value": 1.0, "timestamp": 1772539200.0},
        {"name": "broken", "labels": {}, "value": "NaN?", "timestamp": None}])
    samples, malformed = scrapes.normalise(raw.decode(message, raw.SCRAPES_REQUIRED))
    by_metric = {s["metric"]: s for s in samples}
    ttft = by_metric["vllm:time_to_first_token_seconds"]
    assert ttft["buckets"] == [[0.05, 1.0], [0.5, 3.0], ["+Inf", 4.0]] and ttft["value"] == 0.9
    target = {"job": "nim", "instance": "http://llama:8000/v1/metrics"}
    assert ttft["labels"] == {**target, "model_name": "m"} and ttft["deployment_id"] == "prod/llama-3-1-8b"
    assert by_metric["vllm:num_requests_running"]["ts"] == "2026-03-03T12:00:00.000000Z"
    assert by_metric["up"]["value"] == 1.0 and malformed == 1
    again, _ = scrapes.normalise(raw.decode(message, raw.SCRAPES_REQUIRED))
    assert [s["sample_id"] for s in again] == [s["sample_id"] for s in samples]
    assert all(set(s) == set(records.METRIC_SAMPLE_FIELDS) for s in samples)


def test_two_pods_of_one_deployment_export_distinct_series():
    def ttft(target: str) -> dict:
        message = sc.scrape_message(target, T, [
            {"name": "vllm:time_to_first_token_seconds_bucket", "labels": {"model_name": "m", "le": "+Inf"},
             "value": 4.0, "timestamp": None}])
        samples, _ = scrapes.normalise(raw.decode(message, raw.SCRAPES_REQUIRED))
        return next(s for s in samples if s["metric"] == "vllm:time_to_first_token_seconds")

    a, b = ttft("http://llama-0:8000/v1/metrics"), ttft("http://llama-1:8000/v1/metrics")
    assert a["deployment_id"] == b["deployment_id"] and a["labels"] != b["labels"]
    assert a["sample_id"] != b["sample_id"]


@pytest.mark.parametrize("kind,value,reason", [
    (normalize.SPANS, b"\xff\x00not protobuf", "malformed_protobuf"),
    (normalize.NIMLOGS, b'{"schema": 1, "source": "x"}', "malformed_nimlogs"),
    (normalize.SCRAPES, b"[]", "malformed_scrape"),
    (normalize.DEPLOYMENTS, records.encode_batch("model_call", []), "malformed_deployment"),
])
def test_bad_input_is_a_permanent_error_naming_the_reason(kind, value, reason):
    with pytest.raises(PermanentError) as raised:
        normalize.normalise(kind, value, POLICY)
    assert raised.value.reason == reason
