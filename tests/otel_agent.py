"""An agent trace sent through the real OpenTelemetry SDK and its OTLP/HTTP exporter:
invoke_agent → chat (response asks for a tool) → execute_tool, plus NIM's llm_request."""

from __future__ import annotations

import json
import time
import uuid

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context


def exporting_provider(endpoint: str, service: str) -> TracerProvider:
    """A service's TracerProvider exporting each span, as it ends, through the real OTLP/HTTP
    exporter to the collector at `endpoint` (one request per span)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces",
                                                                      timeout=10)))
    return provider


def send_agent_trace(endpoint: str, *, caller: str = "alice", tool: str = "delete_record",
                     model: str = "meta/llama-3.1-8b-instruct", prompt: str = "clean up the stale order",
                     target: str = "prod-db/orders/42", error_type: str | None = None,
                     conversation_id: str | None = None) -> dict[str, str]:
    """Emit one agent trace; returns the ids a test asserts on. With `error_type`, the
    tool run fails with that `error.type`; with `conversation_id`, the agent and its model
    call carry it as `gen_ai.conversation.id`."""
    call_id = f"chatcmpl-{uuid.uuid4().hex}"
    tool_call_id = f"chatcmpl-tool-{uuid.uuid4().hex[:16]}"
    agent = exporting_provider(endpoint, "ops-agent")
    nim = exporting_provider(endpoint, "nim-llama")
    tracer = agent.get_tracer("agent")
    nim_tracer = nim.get_tracer("vllm")
    conversation = {"gen_ai.conversation.id": conversation_id} if conversation_id else {}
    with tracer.start_as_current_span("invoke_agent ops", kind=SpanKind.INTERNAL,
                                      attributes={"gen_ai.operation.name": "invoke_agent",
                                                  "gen_ai.agent.name": "ops", "enduser.id": caller,
                                                  **conversation}) as agent_span:
        with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT,
                                          attributes=conversation) as chat:
            chat.set_attributes({
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": model,
                "gen_ai.response.id": call_id,
                "gen_ai.response.model": model,
                "gen_ai.response.finish_reasons": ["tool_calls"],
                "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.output_tokens": 24,
                "server.address": "llama.nim.svc",
                "server.port": 8000,
                "enduser.id": caller,
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
                    {"type": "text", "content": prompt}]}]),
                "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                    {"type": "tool_call", "id": tool_call_id, "name": tool,
                     "arguments": {"id": 42}}], "finish_reason": "tool_calls"}]),
            })
            # NIM's own span for the same request, a child through W3C traceparent.
            with nim_tracer.start_as_current_span("llm_request", kind=SpanKind.SERVER,
                                                  context=set_span_in_context(chat)) as server:
                server.set_attributes({
                    "gen_ai.request.id": call_id,
                    "gen_ai.response.model": model,
                    "gen_ai.usage.prompt_tokens": 120,
                    "gen_ai.usage.completion_tokens": 24,
                    "gen_ai.latency.time_to_first_token": 0.042,
                    "gen_ai.latency.e2e": 0.310,
                    "gen_ai.latency.time_in_queue": 0.003,
                })
                time.sleep(0.001)
        with tracer.start_as_current_span(f"execute_tool {tool}", kind=SpanKind.INTERNAL) as run:
            run.set_attributes({
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool,
                "gen_ai.tool.call.id": tool_call_id,
                "gen_ai.tool.type": "function",
                "gen_ai.tool.call.arguments": json.dumps({"id": 42}),
                "nimtrail.approval.gate": "policy",
                "nimtrail.approval.decision": "auto_approved",
                "nimtrail.tool.target": target,
            })
            if error_type is None:
                run.set_status(Status(StatusCode.OK))
            else:
                run.set_attribute("error.type", error_type)
                run.set_status(Status(StatusCode.ERROR))
    for provider in (agent, nim):
        provider.force_flush()
        provider.shutdown()
    context = agent_span.get_span_context()
    return {"call_id": call_id, "tool_call_id": tool_call_id, "caller": caller, "tool": tool,
            "trace_id": format(context.trace_id, "032x"), "agent_span_id": format(context.span_id, "016x")}
