"""Inputs for processor tests and the benchmark, built with the real OpenTelemetry SDK.

Spans are recorded in memory by the SDK (explicit timestamps, so a test can place calls
before and after a deployment upgrade) and either encoded to OTLP protobuf with the SDK's
own encoder (pure tests) or sent with the real OTLP/HTTP exporter to a collector.
Log batches, scrapes and deployment records are built in the formats of nimtrail/raw.py.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from nimtrail import raw, records

MODEL = "meta/llama-3.1-8b-instruct"
NIM_RESOURCE = {"service.name": "nim-llama", "k8s.namespace.name": "prod",
                "k8s.deployment.name": "llama-3-1-8b", "k8s.pod.name": "llama-3-1-8b-7d9f-abcde"}


def ns(when: dt.datetime) -> int:
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def deployment(deployment_id: str, version: int, valid_from: dt.datetime, **fields: Any) -> dict[str, Any]:
    values = dict(
        source="helm", nim_image="nvcr.io/nim/meta/llama-3.1-8b-instruct", nim_release="1.8.0",
        model_id=MODEL, engine_backend="vllm", profile_name="vllm-bf16-tp1-pp1", gpu_type="H100",
        gpu_count=1, purpose="summarise support tickets", tool_calling_allowed=False,
        allowed_clients=["ops-agent", "support-bot"], tool_servers=["crm-mcp"],
        destructive_tools=["delete_record"], reviewed_by="governance@example.com",
        identities={"k8s": ["prod/llama-3-1-8b"], "pod_prefixes": ["prod/llama-3-1-8b-"],
                    "service_names": ["nim-llama"], "host_ports": ["llama.nim.svc:8000"],
                    "model_names": [MODEL]},
        observed_at=iso(valid_from))
    values.update(fields)
    return records.new("deployment", deployment_id=deployment_id, version=version,
                       valid_from=iso(valid_from), **values)


def deployment_message(record: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) for the compacted deployments topic."""
    key = f"{record['deployment_id']}@{record['version']}".encode()
    return key, records.encode_batch("deployment", [record])


def nimlog_message(lines: list[str], *, source: str = "prod/llama-3-1-8b-7d9f-abcde",
                   deployment: str | None = "prod/llama-3-1-8b", received: dt.datetime | None = None,
                   file: str | None = "/var/log/pods/llama/0.log", first_offset: int = 0) -> bytes:
    received = received or dt.datetime.now(dt.timezone.utc)
    offset, items = first_offset, []
    for text in lines:
        items.append({"text": text, "offset": offset if file else None, "time": None, "stream": "stderr"})
        offset += len(text) + 1
    return raw.encode({"receiver": "filelog", "source": source, "deployment": deployment, "file": file,
                       "host": "node-1", "received_at": iso(received), "lines": items})


def scrape_message(target: str, when: dt.datetime, samples: list[dict[str, Any]],
                   deployment: str | None = "prod/llama-3-1-8b", job: str = "nim") -> bytes:
    return raw.encode({"target": target, "deployment": deployment, "job": job, "scraped_at": iso(when),
                       "up": 1, "error": None, "duration_ms": 3.2, "samples": samples})


class World:
    """A set of services recording spans into one in-memory exporter."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self._providers: dict[str, TracerProvider] = {}

    def tracer(self, service: str, **resource: Any):
        key = json.dumps([service, resource], sort_keys=True)
        if key not in self._providers:
            provider = TracerProvider(resource=Resource.create({"service.name": service, **resource}))
            provider.add_span_processor(SimpleSpanProcessor(self.exporter))
            self._providers[key] = provider
        return self._providers[key].get_tracer("nimtrail-tests")

    def take(self) -> list[ReadableSpan]:
        spans = list(self.exporter.get_finished_spans())
        self.exporter.clear()
        return spans

    @staticmethod
    def otlp(spans: list[ReadableSpan]) -> bytes:
        return encode_spans(spans).SerializeToString()

    @staticmethod
    def send(endpoint: str, spans: list[ReadableSpan]) -> None:
        """Export through the real OTLP/HTTP exporter (one request)."""
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=10)
        result = exporter.export(spans)
        exporter.shutdown()
        if result.name != "SUCCESS":
            raise AssertionError(f"the collector refused the spans: {result}")


def agent_run(world: World, start: dt.datetime, *, caller: str = "alice", agent_service: str = "ops-agent",
              tool: str = "delete_record", gate: str = "policy", decision: str = "auto_approved",
              link_by_id: bool = True, mcp: bool = True, nim_resource: dict[str, Any] | None = None,
              caller_on_chat: bool = False, server: str = "llama.nim.svc", port: int = 8000,
              model: str = MODEL, mcp_server: str = "crm-mcp", keep_content: bool = True,
              tool_in_own_trace: bool = False, nim_in_own_trace: bool = False) -> dict[str, str]:
    """invoke_agent → chat (the response asks for `tool`) with NIM's llm_request as its child
    → execute_tool → MCP tools/call client → MCP tools/call server. Returns the ids.

    `tool_in_own_trace`: the trace context broke before the tool ran (a queue, a worker
    that did not propagate it): execute_tool starts a trace of its own, and only its
    `gen_ai.tool.call.id` names the call that asked for it. `nim_in_own_trace`: NIM did
    not take up the caller's trace context, so its llm_request span starts a trace of its
    own and only the request id joins it to the chat span."""
    call_id = f"chatcmpl-{uuid.uuid4().hex}"
    tool_call_id = f"chatcmpl-tool-{uuid.uuid4().hex[:16]}"
    ms = dt.timedelta(milliseconds=1)
    agent = world.tracer(agent_service)
    nim = world.tracer(nim_resource.get("service.name", "nim") if nim_resource else NIM_RESOURCE["service.name"],
                       **{k: v for k, v in (nim_resource or NIM_RESOURCE).items() if k != "service.name"})
    mcp_tracer = world.tracer(mcp_server)
    root = agent.start_span("invoke_agent ops", kind=SpanKind.INTERNAL, start_time=ns(start), attributes={
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "ops", "enduser.id": caller})
    ctx = set_span_in_context(root)
    chat = agent.start_span(f"chat {model}", context=ctx, kind=SpanKind.CLIENT, start_time=ns(start + ms))
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": model,
        "gen_ai.response.id": call_id, "gen_ai.response.model": model,
        "gen_ai.response.finish_reasons": ["tool_calls"], "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 24, "server.address": server, "server.port": port}
    if caller_on_chat:
        attrs["enduser.id"] = caller
    if keep_content:
        attrs["gen_ai.input.messages"] = json.dumps([{"role": "user", "parts": [
            {"type": "text", "content": "clean up the stale order; mail bob@example.com"}]}])
        attrs["gen_ai.output.messages"] = json.dumps([{"role": "assistant", "parts": [
            {"type": "tool_call", "id": tool_call_id, "name": tool, "arguments": {"id": 42}}],
            "finish_reason": "tool_calls"}])
    chat.set_attributes(attrs)
    server_span = nim.start_span("llm_request", context=Context() if nim_in_own_trace else set_span_in_context(chat),
                                 kind=SpanKind.SERVER,
                                 start_time=ns(start + 2 * ms))
    server_span.set_attributes({
        "gen_ai.request.id": call_id, "gen_ai.response.model": model,
        "gen_ai.usage.prompt_tokens": 120, "gen_ai.usage.completion_tokens": 24,
        "gen_ai.latency.time_to_first_token": 0.042, "gen_ai.latency.e2e": 0.310,
        "gen_ai.latency.time_in_queue": 0.003})
    server_span.end(end_time=ns(start + 312 * ms))
    chat.end(end_time=ns(start + 315 * ms))
    run = agent.start_span(f"execute_tool {tool}", context=Context() if tool_in_own_trace else ctx,
                           kind=SpanKind.INTERNAL, start_time=ns(start + 320 * ms))
    tool_attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                  "gen_ai.tool.type": "function", "gen_ai.tool.call.arguments": json.dumps({"id": 42}),
                  "nimtrail.approval.gate": gate, "nimtrail.approval.decision": decision,
                  "nimtrail.tool.target": "prod-db/orders/42"}
    if link_by_id:
        tool_attrs["gen_ai.tool.call.id"] = tool_call_id
    run.set_attributes(tool_attrs)
    ids = {"call_id": call_id, "tool_call_id": tool_call_id, "action_id": format(run.get_span_context().span_id, "016x"),
           "trace_id": format(root.get_span_context().trace_id, "032x"),
           "action_trace_id": format(run.get_span_context().trace_id, "032x")}
    if mcp:
        client = agent.start_span(f"tools/call {tool}", context=set_span_in_context(run), kind=SpanKind.CLIENT,
                                  start_time=ns(start + 321 * ms))
        client.set_attributes({"mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool",
                               "gen_ai.tool.name": tool, "mcp.session.id": "s-1", "jsonrpc.request.id": "7",
                               "server.address": f"{mcp_server}.tools.svc", "server.port": 8080})
        served = mcp_tracer.start_span(f"tools/call {tool}", context=set_span_in_context(client),
                                       kind=SpanKind.SERVER, start_time=ns(start + 322 * ms))
        served.set_attributes({"mcp.method.name": "tools/call", "gen_ai.tool.name": tool,
                               "mcp.session.id": "s-1", "jsonrpc.request.id": "7"})
        served.end(end_time=ns(start + 330 * ms))
        client.end(end_time=ns(start + 331 * ms))
    run.set_status(Status(StatusCode.OK))
    run.end(end_time=ns(start + 335 * ms))
    root.end(end_time=ns(start + 340 * ms))
    return ids
