"""MCP tool calls as the conventions write them: the MCP client span is the tool action
unless an outer execute_tool span covers it, and the MCP server span names the server.
Pure: spans from the real OTel SDK, normalised and joined without Kafka."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from opentelemetry.trace import SpanKind, set_span_in_context

from nimtrail.config import ProcessorConfig
from processors import evidence as ev, normalize
from tests import mcp_trace, scenarios as sc, trail
from tests.test_processors_normalise import one_span

T0 = dt.datetime(2026, 3, 3, 12, 0, 0, tzinfo=dt.timezone.utc)
CONFIG = ProcessorConfig(join_window=60, state_ttl=600)


def per_span(world: sc.World) -> list[tuple[str, bytes]]:
    """One export request per span: every order the collector could deliver them in."""
    return [(normalize.SPANS, sc.World.otlp([s])) for s in world.take()]


def run_of(outer_execute_tool: bool) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    world = sc.World()
    ids = mcp_trace.tool_run(world.tracer("ops-agent"), world.tracer("crm-mcp"), start=T0,
                             outer_execute_tool=outer_execute_tool)
    return ids, per_span(world)


# -- classify ----------------------------------------------------------------------------

def test_mcp_client_span_with_execute_tool_carries_the_tool_call_and_the_server_address():
    item = one_span("tools/call delete_record", {
        "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "delete_record", "gen_ai.tool.call.id": "chatcmpl-tool-1",
        "mcp.session.id": "s-9", "jsonrpc.request.id": "3", "server.address": "crm-mcp.tools.svc",
        "server.port": 8080}, kind=SpanKind.CLIENT, service="ops-agent")
    f = item.fields
    assert (item.kind, item.source, item.key) == (ev.MCP, ev.SPAN_MCP_CLIENT, f["span_id"])
    assert (f["tool_call_id"], f["tool_name"], f["mcp_method"]) == ("chatcmpl-tool-1", "delete_record", "tools/call")
    assert (f["mcp_server"], f["mcp_session"], f["jsonrpc_id"]) == ("crm-mcp.tools.svc:8080", "s-9", "3")
    assert set(f["mcp_aliases"]) == {"crm-mcp.tools.svc:8080", "crm-mcp.tools.svc"}


def test_mcp_server_span_names_its_own_service_even_when_it_says_execute_tool():
    item = one_span("tools/call delete_record", {
        "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "delete_record", "rpc.jsonrpc.request_id": "3"},
        kind=SpanKind.SERVER, service="crm-mcp")
    assert (item.kind, item.source) == (ev.MCP, ev.SPAN_MCP_SERVER)  # never an action of its own
    assert (item.fields["mcp_server"], item.fields["jsonrpc_id"]) == ("crm-mcp", "3")  # older JSON-RPC name


def test_an_execute_tool_span_the_mcp_instrumentation_added_to_is_mcp_client_evidence():
    item = one_span("execute_tool lookup", {
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup", "gen_ai.tool.call.id": "c-1",
        "mcp.method.name": "tools/call", "server.address": "kb-mcp", "server.port": 9000})
    assert (item.kind, item.source, item.fields["tool_name"]) == (ev.MCP, ev.SPAN_MCP_CLIENT, "lookup")


# -- the join ----------------------------------------------------------------------------

def _assert_the_action(actions: dict, ids: dict[str, str]) -> None:
    assert list(actions) == [ids["action_id"]]
    action = actions[ids["action_id"]]
    assert (action["tool_call_id"], action["tool_name"], action["call_id"]) == (
        ids["tool_call_id"], "delete_record", ids["call_id"])
    assert (action["mcp_server"], action["mcp_method"], action["executed_by"]) == ("crm-mcp", "tools/call", "ops")


@pytest.mark.parametrize("outer_execute_tool", [False, True], ids=["mcp-client-only", "with-execute_tool"])
def test_one_action_in_every_arrival_order_before_any_join_window_passes(outer_execute_tool):
    """Without an execute_tool the MCP client span is the action (emitted as soon as its
    ancestors show nothing can claim it, not a join window later); with one, the two are
    one action under the execute_tool's key. Never two, whatever came first, and the
    server span's service is the MCP server either way."""
    ids, messages = run_of(outer_execute_tool)
    reference = None
    for order in itertools.permutations(messages):
        got, pipeline = trail.run(order, CONFIG, settle_at=None)
        actions = got.of("tool_action")
        _assert_the_action(actions, ids)
        reference = reference or actions
        assert actions == reference  # the same record, whatever the order
        pipeline.sweep(1000)
        settled = trail.Trail()
        settled.add_outputs(pipeline.take())
        assert set(settled.of("tool_action")) <= {ids["action_id"]}  # settling adds no second action


def test_the_call_links_to_the_mcp_action_by_tool_call_id_across_traces():
    """Context lost between the model call and the tool run: two traces, joined by the
    tool-call id alone, whichever arrives first."""
    world = sc.World()
    ids = mcp_trace.tool_run(world.tracer("ops-agent"), world.tracer("crm-mcp"), start=T0)
    spans = world.take()
    chat = [s for s in spans if s.name.startswith("chat ")]
    rest = [s for s in spans if not s.name.startswith("chat ")]
    # The chat span again, as the root of a trace of its own.
    other = sc.World()
    lone = other.tracer("ops-agent").start_span(chat[0].name, kind=SpanKind.CLIENT, start_time=chat[0].start_time,
                                                attributes=dict(chat[0].attributes))
    lone.end(end_time=chat[0].end_time)
    call_part = [(normalize.SPANS, sc.World.otlp(other.take()))]
    tool_part = [(normalize.SPANS, sc.World.otlp(rest))]
    for order in (tool_part + call_part, call_part + tool_part):
        got, _ = trail.run(order, CONFIG, settle_at=None)
        action = got.of("tool_action")[ids["action_id"]]
        assert action["call_id"] == ids["call_id"] and action["mcp_server"] == "crm-mcp"


def test_an_mcp_client_span_under_an_unaudited_parent_waits_for_its_join_window():
    """A parent nimtrail does not see might be an execute_tool still on its way: the span
    becomes the action only once the window has passed with none claiming it."""
    world = sc.World()
    agent, server = world.tracer("direct-agent"), world.tracer("crm-mcp")
    handler = agent.start_span("POST /tickets", kind=SpanKind.SERVER, start_time=sc.ns(T0))
    client = agent.start_span("tools/call lookup", context=set_span_in_context(handler), kind=SpanKind.CLIENT,
                              start_time=sc.ns(T0), attributes={
        "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup",
        "jsonrpc.request.id": "1", "server.address": "crm-mcp.tools.svc", "server.port": 8080})
    served = server.start_span("tools/call lookup", context=set_span_in_context(client), kind=SpanKind.SERVER,
                               start_time=sc.ns(T0), attributes={"mcp.method.name": "tools/call",
                                                                 "jsonrpc.request.id": "1"})
    served.end(end_time=sc.ns(T0 + dt.timedelta(milliseconds=5)))
    client.end(end_time=sc.ns(T0 + dt.timedelta(milliseconds=6)))
    handler.end(end_time=sc.ns(T0 + dt.timedelta(milliseconds=7)))
    unsettled, pipeline = trail.run(per_span(world), CONFIG, settle_at=None)
    assert not unsettled.of("tool_action")
    pipeline.sweep(1000)
    actions = list(pipeline.take().records["tool_action"])
    assert [a["action_id"] for a in actions] == [format(client.get_span_context().span_id, "016x")]
    assert (actions[0]["mcp_server"], actions[0]["tool_name"], actions[0]["executed_by"]) == (
        "crm-mcp", "lookup", "direct-agent")


def test_an_execute_tool_with_the_same_tool_call_id_claims_the_mcp_span_where_parentage_breaks():
    """An execute_tool whose MCP client span hangs under an unaudited span (a framework's
    own span between them) still makes one action: the tool-call id names it."""
    world = sc.World()
    agent, server = world.tracer("ops-agent"), world.tracer("crm-mcp")
    run = agent.start_span("execute_tool lookup", kind=SpanKind.INTERNAL, start_time=sc.ns(T0), attributes={
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup", "gen_ai.tool.call.id": "call-7"})
    middle = agent.start_span("framework.dispatch", context=set_span_in_context(run), start_time=sc.ns(T0))
    client = agent.start_span("tools/call lookup", context=set_span_in_context(middle), kind=SpanKind.CLIENT,
                              start_time=sc.ns(T0 - dt.timedelta(seconds=1)), attributes={  # a skewed clock
        "mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup",
        "gen_ai.tool.call.id": "call-7", "server.address": "crm-mcp.tools.svc", "server.port": 8080})
    served = server.start_span("tools/call lookup", context=set_span_in_context(client), kind=SpanKind.SERVER,
                               start_time=sc.ns(T0), attributes={"mcp.method.name": "tools/call"})
    for span in (served, client, middle, run):
        span.end(end_time=sc.ns(T0 + dt.timedelta(milliseconds=9)))
    got, _ = trail.run(per_span(world), CONFIG)
    assert list(got.of("tool_action")) == [format(run.get_span_context().span_id, "016x")]
    assert got.of("tool_action")[format(run.get_span_context().span_id, "016x")]["mcp_server"] == "crm-mcp"
