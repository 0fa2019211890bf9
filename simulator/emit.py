"""Plays a request plan on the clock: spans through each service's tracer (OpenTelemetry
GenAI and MCP conventions, vLLM's llm_request), and the NIM's own accounting (metrics and
log lines) for every model call it answered.

Trace context travels as it does between processes: into NIM as a W3C `traceparent`
header (only for clients that propagate it), into an MCP server inside the JSON-RPC
request's `params._meta`. Both use the real W3C propagator on a carrier.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from simulator.fleet import Deployment
from simulator.plan import CallPlan, RequestPlan, ToolPlan
from simulator.scenario import Scenario
from simulator.telemetry import Telemetry

W3C = TraceContextTextMapPropagator()
MCP_PROTOCOL = "2025-06-18"


def _at(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc)


def _hop(context: Context) -> Context:
    """Carry a context across a process boundary the way the wire does."""
    carrier: dict[str, str] = {}
    W3C.inject(carrier, context=context)
    return W3C.extract(carrier)


class Emitter:
    def __init__(self, scenario: Scenario, fleet: dict[str, Deployment], telemetry: Telemetry):
        self.scenario = scenario
        self.fleet = fleet
        self.telemetry = telemetry

    def client_tracer(self, service: str):
        return self.telemetry.tracer(f"client:{service}", {"service.name": service,
                                                           "service.namespace": "apps"})

    def mcp_tracer(self, name: str):
        return self.telemetry.tracer(f"mcp:{name}", {"service.name": name, "service.namespace": "tools"})

    def play(self, plan: RequestPlan, end_ns: int, logged_ns: int | None = None) -> dict[str, Any]:
        """Emit the request so that it ends at `end_ns`, the NIM's log lines stamped
        `logged_ns` (default `end_ns`: a log file only grows forward in time); returns the
        ids it produced."""
        base = end_ns - plan.end
        client = plan.client
        tracer = self.client_tracer(client.service)
        ids: dict[str, Any] = {"calls": [], "actions": []}
        context = Context()
        agent = None
        if client.agent:
            agent = tracer.start_span(f"invoke_agent {client.agent}", context=context, kind=SpanKind.INTERNAL,
                                      start_time=base, attributes={
                                          "gen_ai.operation.name": "invoke_agent",
                                          "gen_ai.agent.name": client.agent,
                                          "gen_ai.provider.name": "openai",
                                          "enduser.id": plan.user})
            context = set_span_in_context(agent)
            ids["trace_id"] = f"{agent.get_span_context().trace_id:032x}"
        for step in plan.steps:
            if isinstance(step, CallPlan):
                ids["calls"].append(self._call(tracer, context, plan, step, base,
                                               end_ns if logged_ns is None else logged_ns))
            else:
                ids["actions"].append(self._tool(tracer, context, step, base))
        if agent is not None:
            agent.end(end_time=base + plan.end - 1_000_000)
        return ids

    def _call(self, tracer, context: Context, plan: RequestPlan, call: CallPlan, base: int,
              logged_ns: int) -> dict[str, Any]:
        deployment = self.fleet[call.deployment_id]
        host = f"{deployment.spec.name}.{deployment.spec.namespace}.svc.cluster.local"
        s = call.served
        span = tracer.start_span(f"chat {call.model}", context=context, kind=SpanKind.CLIENT,
                                 start_time=base + call.start, attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": call.model,
            "gen_ai.request.max_tokens": call.max_tokens,
            "gen_ai.request.temperature": 0.2,
            "gen_ai.response.id": call.call_id,
            "gen_ai.response.model": call.model,
            "gen_ai.response.finish_reasons": [s.finish_reason],
            "gen_ai.usage.input_tokens": s.prompt_tokens,
            "gen_ai.usage.output_tokens": s.completion_tokens,
            "server.address": host,
            "server.port": 8000,
            "enduser.id": plan.user,
            "gen_ai.input.messages": json.dumps(call.input_messages),
            "gen_ai.output.messages": json.dumps(call.output_messages),
        })
        # NIM is another process: it sees the caller's trace only through traceparent.
        nim_context = _hop(set_span_in_context(span)) if plan.client.propagate_context else Context()
        nim_start = base + call.start + (call.end - call.start - int(s.e2e_s * 1e9)) // 2
        nim_end = nim_start + int(s.e2e_s * 1e9)
        nim_span_id = None
        if deployment.spec.tracing:
            nim = deployment.tracer().start_span("llm_request", context=nim_context, kind=SpanKind.SERVER,
                                                 start_time=nim_start, attributes={
                "gen_ai.request.id": call.call_id,
                "gen_ai.response.model": call.model,
                "gen_ai.request.max_tokens": call.max_tokens,
                "gen_ai.request.temperature": 0.2,
                "gen_ai.request.top_p": 0.7,
                "gen_ai.request.n": 1,
                "gen_ai.usage.prompt_tokens": s.prompt_tokens,
                "gen_ai.usage.completion_tokens": s.completion_tokens,
                "gen_ai.latency.time_in_queue": s.queue_s,
                "gen_ai.latency.time_to_first_token": s.ttft_s,
                "gen_ai.latency.e2e": s.e2e_s,
                "gen_ai.latency.time_in_model_prefill": s.ttft_s,
                "gen_ai.latency.time_in_model_decode": round(max(s.e2e_s - s.queue_s - s.ttft_s, 0), 6),
            })
            nim.end(end_time=nim_end)
            nim_span_id = f"{nim.get_span_context().span_id:016x}"
        span.end(end_time=base + call.end)
        deployment.serve(s, request_id=call.call_id, prompt=call.prompt_text, max_tokens=call.max_tokens,
                         peer=f"{plan.client.address}:{30000 + int(call.call_id[-4:], 16) % 30000}",
                         at=_at(logged_ns))  # a log file only grows forward in time
        ctx = span.get_span_context()
        return {"call_id": call.call_id, "deployment_id": call.deployment_id,
                "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                "nim_span_id": nim_span_id, "tool_call_ids": [t.tool_call_id for t in call.tool_calls]}

    def _tool(self, tracer, context: Context, step: ToolPlan, base: int) -> dict[str, Any]:
        tool = step.tool
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool.name,
            "gen_ai.tool.call.id": step.request.tool_call_id,
            "gen_ai.tool.type": "function",
            "gen_ai.tool.call.arguments": step.request.arguments,
            "nimtrail.approval.gate": tool.gate,
            "nimtrail.tool.target": step.target,
            "nimtrail.tool.destructive": tool.destructive,
        }
        for key, value in (("nimtrail.approval.decision", step.decision),
                           ("nimtrail.approval.approver", step.approver),
                           ("nimtrail.approval.policy_id", step.policy_id)):
            if value:
                attributes[key] = value
        run = tracer.start_span(f"execute_tool {tool.name}", context=context, kind=SpanKind.INTERNAL,
                                start_time=base + step.start, attributes=attributes)
        if tool.gate != "none":
            run.add_event("nimtrail.approval.requested", timestamp=base + step.start + 1_000_000)
            run.add_event(f"nimtrail.approval.{step.decision}",
                          timestamp=base + step.end - (step.end - step.start) // 3)
        if step.executed:
            self._mcp(tracer, set_span_in_context(run), step, base)
            run.set_attribute("gen_ai.tool.call.result", step.result)
        if step.error or not step.executed:
            error = step.error or "approval_denied"
            run.set_attribute("error.type", error)
            run.set_status(Status(StatusCode.ERROR, error))
        else:
            run.set_status(Status(StatusCode.OK))
        run.end(end_time=base + step.end)
        ctx = run.get_span_context()
        return {"action_id": f"{ctx.span_id:016x}", "tool_call_id": step.request.tool_call_id,
                "tool_name": tool.name, "gate": tool.gate, "decision": step.decision,
                "target": step.target, "trace_id": f"{ctx.trace_id:032x}"}

    def _mcp(self, tracer, context: Context, step: ToolPlan, base: int) -> None:
        server = self.scenario.mcp_server(step.tool.mcp_server)
        host, _, port = server.address.rpartition(":")
        start = base + step.end - (step.end - step.start) // 3
        end = base + step.end - 1_000_000
        common = {"mcp.method.name": "tools/call", "mcp.session.id": step.session_id,
                  "mcp.protocol.version": MCP_PROTOCOL, "jsonrpc.request.id": str(step.jsonrpc_id),
                  "gen_ai.tool.name": step.tool.name}
        client = tracer.start_span(f"tools/call {step.tool.name}", context=context, kind=SpanKind.CLIENT,
                                   start_time=start, attributes={**common, "server.address": host,
                                                                 "server.port": int(port),
                                                                 "network.transport": "tcp",
                                                                 "network.protocol.name": "http"})
        # The JSON-RPC request as sent: trace context rides in params._meta.
        request = {"jsonrpc": "2.0", "id": step.jsonrpc_id, "method": "tools/call",
                   "params": {"name": step.tool.name, "arguments": json.loads(step.request.arguments),
                              "_meta": {}}}
        W3C.inject(request["params"]["_meta"], context=set_span_in_context(client))
        received = json.loads(json.dumps(request))
        server_span = self.mcp_tracer(server.name).start_span(
            f"tools/call {step.tool.name}", context=W3C.extract(received["params"]["_meta"]),
            kind=SpanKind.SERVER, start_time=start + 500_000, attributes={**common, "network.transport": "tcp"})
        if step.error:
            for span in (server_span, client):
                span.set_attribute("error.type", step.error)
                span.set_status(Status(StatusCode.ERROR, step.error))
        server_span.end(end_time=end - 500_000)
        client.end(end_time=end)

