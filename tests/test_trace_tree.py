"""The trace tree's assembly from stored spans: parentage, order, offsets, and a session's
members (pure functions, no store)."""

from __future__ import annotations

from warehouse.queries import tree


def span(span_id: str, parent: str | None, role: str, start_ms: int, end_ms: int, **values) -> dict:
    def at(ms: int) -> str:
        return f"2026-01-01T10:00:{ms // 1000:02d}.{ms % 1000:03d}000Z"

    return {"trace_id": values.pop("trace_id", "t1"), "span_id": span_id, "parent_span_id": parent,
            "started_at": at(start_ms), "ended_at": at(end_ms), "role": role, "name": span_id,
            "service": values.pop("service", "ops-agent"), "call_id": values.pop("call_id", None),
            "conversation_id": values.pop("conversation_id", None),
            "mcp_session_id": values.pop("mcp_session_id", None)}


AGENT_TRACE = [
    span("tool", "agent", "tool", 320, 335),
    span("nim", "chat", "nim_server", 5, 290, call_id="chatcmpl-1", service="nim-llama"),
    span("agent", None, "agent", 0, 340, conversation_id="conv-1"),
    span("mcp-server", "mcp-client", "mcp_server", 322, 330, service="crm-mcp", mcp_session_id="s1"),
    span("chat", "agent", "model_call", 1, 300, call_id="chatcmpl-1"),
    span("mcp-client", "tool", "mcp_client", 321, 331, mcp_session_id="s1"),
]


def test_the_waterfall_is_depth_first_by_start_with_offsets_and_durations():
    nodes = tree.waterfall(AGENT_TRACE)
    assert [(n["span_id"], n["depth"], n["parent_span_id"]) for n in nodes] == [
        ("agent", 0, None), ("chat", 1, "agent"), ("nim", 2, "chat"), ("tool", 1, "agent"),
        ("mcp-client", 2, "tool"), ("mcp-server", 3, "mcp-client")]
    by_id = {n["span_id"]: n for n in nodes}
    assert by_id["agent"]["offset_ms"] == 0.0 and by_id["agent"]["duration_ms"] == 340.0
    assert by_id["nim"]["offset_ms"] == 5.0 and by_id["nim"]["duration_ms"] == 285.0


def test_a_nim_span_whose_parent_was_not_audited_hangs_under_its_calls_client_span():
    spans = [span("chat", None, "model_call", 0, 300, call_id="c1"),
             span("nim", "http-client-span", "nim_server", 5, 290, call_id="c1"),
             span("lost", "never-seen", "tool", 310, 320)]
    nodes = tree.waterfall(spans)
    assert [(n["span_id"], n["parent_span_id"]) for n in nodes] == [
        ("chat", None), ("nim", "chat"), ("lost", None)]


def test_parentage_that_loops_still_shows_every_span_once():
    spans = [span("a", "b", "tool", 0, 10), span("b", "a", "tool", 1, 5), span("c", "c", "agent", 2, 3)]
    nodes = tree.waterfall(spans)
    assert sorted(n["span_id"] for n in nodes) == ["a", "b", "c"]


def test_a_session_is_its_marked_spans_their_descendants_and_an_mcp_spans_tool():
    assert tree.session_members(AGENT_TRACE, "conv-1") == {s["span_id"] for s in AGENT_TRACE}
    assert tree.session_members(AGENT_TRACE, "s1") == {"tool", "mcp-client", "mcp-server"}
    assert tree.session_members(AGENT_TRACE, "agent") == {s["span_id"] for s in AGENT_TRACE}
    assert tree.session_members(AGENT_TRACE, "chat") == set()  # not an agent span


def test_calls_and_actions_attach_to_their_spans_and_unstored_ones_still_show():
    calls = [{"call_id": "chatcmpl-1", "span_id": "chat", "trace_id": "t1", "model": "m"},
             {"call_id": "from-logs", "span_id": None, "trace_id": "t1", "model": "m",
              "started_at": "2026-01-01T10:00:00.500000Z", "ended_at": None}]
    actions = [{"action_id": "tool", "tool_name": "delete_record", "trace_id": "t1"}]
    spans = AGENT_TRACE + tree.unplaced(AGENT_TRACE, calls, actions)
    nodes = tree.attach(tree.waterfall(spans), calls, actions)
    by_id = {n["span_id"]: n for n in nodes}
    assert by_id["chat"]["call"]["call_id"] == "chatcmpl-1"
    assert "call" not in by_id["nim"]  # NIM's view of a call whose client span is its node
    assert by_id["tool"]["action"]["tool_name"] == "delete_record"
    assert by_id["mcp-client"]["action"] is None  # the tool span above it is the action
    assert by_id["from-logs"]["call"]["call_id"] == "from-logs" and by_id["from-logs"]["depth"] == 0
