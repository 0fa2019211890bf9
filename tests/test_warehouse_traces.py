"""The `trace` and `session` queries over real HTTP on a real DuckDB file: the tree from the
stored spans, the content of its calls and actions for roles that may see it, a session
across traces, and span rows that are ledgered and verify like every other row."""

from __future__ import annotations

import urllib.request

import orjson
import pytest

from nimtrail import config as config_mod, records
from nimtrail.ops import StageMetrics
from tests.test_warehouse_api import _get, _tokens_file
from tests.warehouse_data import action, ago, call, write
from warehouse.api import QueryApi
from warehouse.store import Store
from warehouse.verify import verify


def span(trace_id: str, span_id: str, parent: str | None, role: str, minutes: float, **values) -> dict:
    return records.new("span", trace_id=trace_id, span_id=span_id, parent_span_id=parent, role=role,
                       started_at=ago(minutes=minutes), ended_at=ago(minutes=minutes - 0.5),
                       version=1, observed_at=ago(), **values)


def turn(trace_id: str, agent: str, minutes: float) -> list[dict]:
    """One agent turn: invoke_agent → chat (NIM's span under it) → execute_tool → MCP."""
    return [span(trace_id, agent, None, "agent", minutes + 1, name="ops", service="ops-agent",
                 conversation_id="conv-7"),
            span(trace_id, f"{agent}-chat", agent, "model_call", minutes + 0.9, call_id=f"call-{trace_id}",
                 name="llama", service="ops-agent", conversation_id="conv-7"),
            span(trace_id, f"{agent}-nim", f"{agent}-chat", "nim_server", minutes + 0.8,
                 call_id=f"call-{trace_id}", service="nim-llama"),
            span(trace_id, f"{agent}-tool", agent, "tool", minutes, name="delete_record", service="ops-agent"),
            span(trace_id, f"{agent}-mcp", f"{agent}-tool", "mcp_server", minutes - 0.1, name="delete_record",
                 service="crm-mcp", mcp_session_id="mcp-9")]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("traces")
    config = config_mod.load(None, env={
        "NIMTRAIL_DATA_DIR": str(tmp_path / "data"),
        "NIMTRAIL_WAREHOUSE__TOKENS_FILE": str(_tokens_file(tmp_path / "tokens.json"))})
    store = Store(config.warehouse_path)
    write(store, "span", turn("t1", "a1", 10) + turn("t2", "a2", 5))
    write(store, "model_call", [call("call-t1", trace_id="t1", span_id="a1-chat", started_at=ago(minutes=10.9)),
                                call("call-t2", trace_id="t2", span_id="a2-chat", started_at=ago(minutes=5.9))])
    write(store, "tool_action", [action("a1-tool", "call-t1", trace_id="t1", started_at=ago(minutes=10)),
                                 action("a2-tool", "call-t2", trace_id="t2", started_at=ago(minutes=5))])
    server = QueryApi(config, store, StageMetrics("warehouse"), lambda: True, host="127.0.0.1", port=0).start()
    yield f"http://127.0.0.1:{server.port}", store, config
    server.shutdown()
    store.close()


def test_a_trace_is_a_tree_of_its_spans_with_content_only_for_roles_that_see_it(api):
    base, _store, _config = api
    status, doc = _get(base, "/v1/query/trace?trace_id=t1", "responder-token")
    assert status == 200 and doc["found"]
    assert [(n["span_id"], n["depth"], n["parent_span_id"]) for n in doc["rows"]] == [
        ("a1", 0, None), ("a1-chat", 1, "a1"), ("a1-nim", 2, "a1-chat"), ("a1-tool", 1, "a1"),
        ("a1-mcp", 2, "a1-tool")]
    chat, tool = doc["rows"][1], doc["rows"][3]
    assert chat["call"]["prompt_text"] == "please delete order 42"
    assert tool["action"]["arguments"] == '{"order": 42}' and tool["action"]["target"] == "prod-db/orders/42"
    assert doc["services"] == ["crm-mcp", "nim-llama", "ops-agent"]

    _, hidden = _get(base, "/v1/query/trace?trace_id=t1", "viewer-token")
    assert hidden["content_hidden"] is True
    assert hidden["rows"][1]["call"]["prompt_text"] is None and hidden["rows"][3]["action"]["arguments"] is None
    assert hidden["rows"][1]["call"]["caller"] == "alice"  # metadata stays


def test_a_session_lists_its_calls_and_actions_in_order_across_traces(api):
    base, _store, _config = api
    _, conversation = _get(base, "/v1/query/session?session_id=conv-7", "viewer-token")
    assert [(s["step"], s["kind"], s["id"]) for s in conversation["rows"]] == [
        (1, "model_call", "call-t1"), (2, "tool_action", "a1-tool"),
        (3, "model_call", "call-t2"), (4, "tool_action", "a2-tool")]
    assert conversation["traces"] == ["t1", "t2"] and [a["span_id"] for a in conversation["agents"]] == ["a1", "a2"]
    _, mcp = _get(base, "/v1/query/session?session_id=mcp-9", "viewer-token")
    assert [s["id"] for s in mcp["rows"]] == ["a1-tool", "a2-tool"]
    _, run = _get(base, "/v1/query/session?session_id=a2", "viewer-token")
    assert [s["id"] for s in run["rows"]] == ["call-t2", "a2-tool"]
    status, missing = _get(base, "/v1/query/session", "viewer-token")
    assert status == 400 and missing["parameter"] == "session_id"


def test_span_rows_are_ledgered_and_verify(api):
    _base, store, config = api
    with store.snapshot() as (con, _):
        report = verify(con, config.data_path)
    assert report["rows_checked"]["trace_spans"] == 10
    assert not [p for p in report["problems"] if p["check"] in ("rows", "binding", "chain")], report["problems"]
