"""The spans the simulator emits, read back through the SDK's in-memory exporter: the shapes
the GenAI and MCP conventions and vLLM define, and how trace context travels."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import simulator
from simulator import scenario as scenario_mod
from simulator.fleet import EPOCH


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    exported = InMemorySpanExporter()
    sim = simulator.run(scenario_mod.load(), simulator.Options(
        out_dir=tmp_path_factory.mktemp("spans"), duration=20, rate=4, realtime=False,
        span_exporter=exported))
    return sim, exported.get_finished_spans()


def _hex(n: int, width: int) -> str:
    return f"{n:0{width}x}"


def test_incident_trace_has_the_agent_nim_and_mcp_views(spans):
    sim, finished = spans
    inc = sim.incident
    trace = [s for s in finished if _hex(s.context.trace_id, 32) == inc["trace_id"]]
    by_name = {}
    for span in trace:
        by_name.setdefault(span.name, []).append(span)
    agent = by_name["invoke_agent ops"][0]
    assert agent.attributes["enduser.id"] == "oncall-bot"
    assert agent.resource.attributes["service.name"] == "ops-agent"

    first = next(s for s in by_name["chat meta/llama-3.1-8b-instruct"]
                 if s.attributes["gen_ai.response.id"] == inc["call_id"])
    assert first.kind == SpanKind.CLIENT and first.parent.span_id == agent.context.span_id
    parts = json.loads(first.attributes["gen_ai.output.messages"])[0]["parts"]
    assert parts == [{"type": "tool_call", "id": inc["tool_call_id"], "name": "delete_records",
                      "arguments": {"table": "customers", "older_than_days": 30}}]
    assert first.attributes["gen_ai.response.finish_reasons"] == ("tool_calls",)

    # NIM's own span is a child through traceparent, and names the same request.
    nim = next(s for s in by_name["llm_request"] if s.attributes["gen_ai.request.id"] == inc["call_id"])
    assert nim.kind == SpanKind.SERVER and nim.parent.span_id == first.context.span_id
    assert nim.resource.attributes["k8s.deployment.name"] == "llama-3-1-8b"
    assert nim.resource.attributes["k8s.namespace.name"] == "prod"
    assert nim.resource.attributes["k8s.pod.name"].startswith("llama-3-1-8b-")
    latency = {k: v for k, v in nim.attributes.items() if k.startswith("gen_ai.latency.")}
    assert 0 < latency["gen_ai.latency.time_to_first_token"] < latency["gen_ai.latency.e2e"] < 60
    assert nim.attributes["gen_ai.usage.prompt_tokens"] == first.attributes["gen_ai.usage.input_tokens"]

    [tool] = by_name["execute_tool delete_records"]
    assert _hex(tool.context.span_id, 16) == inc["action_id"]
    assert tool.attributes["gen_ai.tool.call.id"] == inc["tool_call_id"]
    assert tool.attributes["nimtrail.approval.gate"] == "policy"
    assert tool.attributes["nimtrail.approval.decision"] == "auto_approved"
    assert tool.attributes["nimtrail.approval.policy_id"] == "ops-auto-remediation-v3"
    assert tool.attributes["nimtrail.tool.target"] == "prod-db/customers"

    calls = by_name["tools/call delete_records"]
    client = next(s for s in calls if s.kind == SpanKind.CLIENT)
    server = next(s for s in calls if s.kind == SpanKind.SERVER)
    assert client.parent.span_id == tool.context.span_id
    assert server.parent.span_id == client.context.span_id  # through params._meta
    assert server.resource.attributes["service.name"] == "db-admin-mcp"
    for span in (client, server):
        assert span.attributes["mcp.method.name"] == "tools/call"
        assert span.attributes["mcp.session.id"] == client.attributes["mcp.session.id"]
        assert span.attributes["jsonrpc.request.id"] == client.attributes["jsonrpc.request.id"]
    # The follow-up call carries the tool result back to the model.
    follow_up = [s for s in by_name["chat meta/llama-3.1-8b-instruct"] if s is not first]
    messages = json.loads(follow_up[0].attributes["gen_ai.input.messages"])
    assert messages[-1]["role"] == "tool" and messages[-1]["parts"][0]["id"] == inc["tool_call_id"]


def test_clients_that_do_not_propagate_leave_nim_a_trace_of_its_own(spans):
    _sim, finished = spans
    chats = [s for s in finished if s.name.startswith("chat ")]
    nims = {s.attributes["gen_ai.request.id"]: s for s in finished if s.name == "llm_request"}
    notebook = [s for s in chats if s.resource.attributes["service.name"] == "analytics-notebook"]
    assert notebook and len(nims) == len(chats)
    for chat in notebook:
        nim = nims[chat.attributes["gen_ai.response.id"]]
        assert nim.parent is None and nim.context.trace_id != chat.context.trace_id
    propagating = [s for s in chats if s.resource.attributes["service.name"] == "summarizer-svc"]
    assert propagating and all(nims[s.attributes["gen_ai.response.id"]].parent.span_id == s.context.span_id
                               for s in propagating)


def test_gates_cover_none_human_and_policy(spans):
    _sim, finished = spans
    tools = [s for s in finished if s.name.startswith("execute_tool ")]
    gates = {s.attributes["nimtrail.approval.gate"] for s in tools}
    assert gates == {"none", "human", "policy"}
    for span in tools:
        if span.attributes["nimtrail.approval.gate"] == "human":
            assert span.attributes["nimtrail.approval.approver"] == "support-lead@example.com"
            assert span.attributes["nimtrail.approval.decision"] in ("approved", "denied")


def test_spans_can_go_over_otlp_grpc(tmp_path):
    """`--otlp grpc://…`: the SDK's gRPC exporter against a real gRPC TraceService."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list = []

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 - the service's name
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        sim = simulator.run(scenario_mod.load(), simulator.Options(
            out_dir=tmp_path, duration=8, rate=3, realtime=False, otlp=f"grpc://127.0.0.1:{port}"))
    finally:
        server.stop(grace=None)
    services = set()
    tool_call_ids = set()
    for request in received:
        for rs in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
            services.add(attrs["service.name"])
            for ss in rs.scope_spans:
                for span in ss.spans:
                    for a in span.attributes:
                        if a.key == "gen_ai.tool.call.id":
                            tool_call_ids.add(a.value.string_value)
    assert {"ops-agent", "llama-3-1-8b", "db-admin-mcp"} <= services
    assert sim.incident["tool_call_id"] in tool_call_ids



def test_no_request_begins_before_the_pod_serving_it_went_live(spans):
    """A call stamped before its revision rolled out would be matched, as of its start, to
    the revision before it (or to none): the first seconds after each rollout included."""
    sim, finished = spans
    went_live = {r["pod"]: dt.datetime.fromisoformat(r["rolled_out_at"].replace("Z", "+00:00"))
                 for dep in sim.fleet.values() for r in dep.rollouts}
    served = [s for s in finished if s.name == "llm_request"]
    for span in served:
        started = EPOCH + dt.timedelta(microseconds=span.start_time // 1000)
        assert started >= went_live[span.resource.attributes["k8s.pod.name"]], span.attributes["gen_ai.request.id"]
    # Both revisions of the upgraded deployment served requests.
    upgraded = {r["pod"] for r in sim.fleet["prod/llama-3-3-70b"].rollouts}
    assert len(upgraded) == 2 and upgraded <= {s.resource.attributes["k8s.pod.name"] for s in served}
