"""MCP tool calls through the running pipeline (OTel SDK exporters → collector → Kafka →
processor → warehouse → query API → `nimtrail trace-back` as a user runs it), default
config: the join window is five minutes, and the trail must not wait for it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests import mcp_trace
from tests.harness import Env, wait_for
from tests.otel_agent import exporting_provider

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(env: Env) -> Env:
    for stage in ("warehouse", "processor", "collector"):
        env.start(stage)
    for stage in ("warehouse", "processor", "collector"):
        env.wait_ready(stage)
    return env


def send(env: Env, **options: Any) -> dict[str, str]:
    """One tool run from the agent's and the MCP server's own services; each span is its own
    export request, the server's first (it ends first)."""
    agent, server = exporting_provider(env.otlp_http, "ops-agent"), exporting_provider(env.otlp_http, "crm-mcp")
    ids = mcp_trace.tool_run(agent.get_tracer("agent"), server.get_tracer("mcp-server"), **options)
    for provider in (server, agent):
        provider.force_flush()
        provider.shutdown()
    return ids


def trace_back(env: Env, tool_call_id: str) -> dict[str, Any] | None:
    """The trace-back once it shows the action with its MCP server and its model call."""
    result = env.cli("trace-back", "--tool-call-id", tool_call_id, "--json", check=False)
    doc = json.loads(result.stdout) if result.stdout.strip() else {}
    actions = doc.get("actions") or []
    if doc.get("call") and actions and all(a["call_id"] and a["mcp_server"] == "crm-mcp" for a in actions):
        return doc
    return None


def test_an_mcp_tool_call_without_execute_tool_traces_back_to_server_call_and_caller(pipeline):
    ids = send(pipeline, caller="alice")
    doc = wait_for(lambda: trace_back(pipeline, ids["tool_call_id"]), timeout=90,
                   what="the MCP tool call to trace back to its model call")
    [action] = doc["actions"]
    assert action["action_id"] == ids["client_span_id"]  # the MCP client span is the action
    assert (action["tool_name"], action["tool_call_id"], action["call_id"]) == (
        "delete_record", ids["tool_call_id"], ids["call_id"])
    assert (action["mcp_server"], action["mcp_method"], action["executed_by"]) == ("crm-mcp", "tools/call", "ops")
    assert doc["call"]["call_id"] == ids["call_id"]
    assert doc["call"]["tool_call_ids"] == [ids["tool_call_id"]]
    assert doc["caller"]["caller"] == "alice" and doc["caller"]["client_service"] == "ops-agent"
    table = pipeline.cli("trace-back", "--tool-call-id", ids["tool_call_id"]).stdout
    assert "crm-mcp" in table and "alice" in table


def test_an_execute_tool_around_the_mcp_client_span_gives_exactly_one_action(pipeline):
    ids = send(pipeline, caller="bob", outer_execute_tool=True)
    doc = wait_for(lambda: trace_back(pipeline, ids["tool_call_id"]), timeout=90,
                   what="the tool run to trace back to its model call")
    assert [a["action_id"] for a in doc["actions"]] == [ids["action_id"]]  # the execute_tool's, alone
    assert ids["action_id"] != ids["client_span_id"]
    assert doc["actions"][0]["mcp_server"] == "crm-mcp" and doc["caller"]["caller"] == "bob"
    listed = json.loads(pipeline.cli("calls", "--json").stdout)
    [row] = [r for r in listed["rows"] if r["call_id"] == ids["call_id"]]
    assert [a["action_id"] for a in row["actions"]] == [ids["action_id"]]
