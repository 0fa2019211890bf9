"""Trace and session views through the running pipeline (OTel SDK exporters → collector →
Kafka → processor → warehouse → query API → `nimtrail trace` / `nimtrail session` as a
user runs them), default config: the spans arrive without waiting for the join window."""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable

import pytest

from tests.harness import Env, wait_for
from tests.otel_agent import send_agent_trace
from tests.test_slice_mcp import pipeline, send  # noqa: F401 - the running stages, one MCP tool run

pytestmark = pytest.mark.integration


def _json(env: Env, *args: str, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    result = env.cli(*args, "--json", check=False)
    doc = json.loads(result.stdout) if result.stdout.strip() else {}
    return doc if doc.get("found") and ready(doc) else None


def _tree(doc: dict[str, Any]) -> list[tuple[str, int, str | None]]:
    roles = {n["span_id"]: n["role"] for n in doc["rows"]}
    return [(n["role"], n["depth"], roles.get(n["parent_span_id"])) for n in doc["rows"]]


def test_an_agent_conversation_as_a_trace_waterfall_and_a_session(pipeline):
    conversation = f"conv-{uuid.uuid4().hex[:8]}"
    first = send_agent_trace(pipeline.otlp_http, conversation_id=conversation, tool="delete_record")
    second = send_agent_trace(pipeline.otlp_http, conversation_id=conversation, tool="send_email",
                              target="mail/ceo")

    def whole(doc: dict[str, Any]) -> bool:
        return len(doc["rows"]) == 4 and all(n.get("call") or n.get("action") or n["role"] in ("agent", "nim_server")
                                             for n in doc["rows"])

    doc = wait_for(lambda: _json(pipeline, "trace", first["trace_id"], ready=whole), timeout=90,
                   what="the agent trace's four spans with their call and action")
    # agent → chat (NIM's server span under it) → execute_tool, each with its parent.
    assert _tree(doc) == [("agent", 0, None), ("model_call", 1, "agent"), ("nim_server", 2, "model_call"),
                          ("tool", 1, "agent")]
    agent, chat, nim, tool = doc["rows"]
    assert agent["span_id"] == first["agent_span_id"] and agent["name"] == "ops"
    assert (chat["service"], nim["service"]) == ("ops-agent", "nim-llama")
    assert chat["call"]["call_id"] == nim["call_id"] == first["call_id"]
    assert chat["call"]["caller"] == "alice" and chat["call"]["tool_names"] == ["delete_record"]
    assert tool["action"]["tool_call_id"] == first["tool_call_id"] and tool["action"]["target"] == "prod-db/orders/42"
    assert chat["call"]["prompt_text"] is None  # the default policy keeps no content
    assert all(n["duration_ms"] is not None and n["offset_ms"] >= 0 for n in doc["rows"])
    assert nim["offset_ms"] >= chat["offset_ms"]
    table = pipeline.cli("trace", first["trace_id"]).stdout
    assert "nim-llama" in table and "delete_record" in table

    session = wait_for(lambda: _json(pipeline, "session", conversation, ready=lambda d: len(d["rows"]) == 4),
                       timeout=90, what="the conversation's two turns")
    assert [(s["kind"], s["id"]) for s in session["rows"]] == [
        ("model_call", first["call_id"]), ("tool_action", tool["span_id"]),
        ("model_call", second["call_id"]), ("tool_action", session["rows"][3]["span_id"])]
    assert session["rows"][3]["tool_action"]["tool_name"] == "send_email"
    assert sorted(session["traces"]) == sorted([first["trace_id"], second["trace_id"]])
    run = _json(pipeline, "session", second["agent_span_id"], ready=lambda d: True)
    assert [s["id"] for s in run["rows"]] == [second["call_id"], session["rows"][3]["id"]]
    assert "send_email" in pipeline.cli("session", conversation).stdout


def test_an_mcp_tool_run_shows_the_server_span_under_the_client_and_its_session(pipeline):
    ids = send(pipeline, outer_execute_tool=True)
    doc = wait_for(lambda: _json(pipeline, "trace", ids["trace_id"], ready=lambda d: len(d["rows"]) == 5),
                   timeout=90, what="the MCP trace's five spans")
    assert _tree(doc) == [("agent", 0, None), ("model_call", 1, "agent"), ("tool", 1, "agent"),
                          ("mcp_client", 2, "tool"), ("mcp_server", 3, "mcp_client")]
    assert doc["rows"][4]["service"] == "crm-mcp"
    session = wait_for(lambda: _json(pipeline, "session", "8267461134f24305af708e66b8eda71a",
                                     ready=lambda d: bool(d["rows"]) and d["rows"][0]["tool_action"]["call_id"]),
                       timeout=90, what="the MCP session's tool action, linked to its call")
    assert [s["id"] for s in session["rows"]] == [ids["action_id"]]
    assert session["rows"][0]["tool_action"]["mcp_server"] == "crm-mcp"
