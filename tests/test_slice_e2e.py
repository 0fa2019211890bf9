"""The vertical slice, end to end on real components: OTel SDK → collector → Kafka →
processor → Kafka → warehouse (DuckDB) → query API → CLI."""

import json

from tests.harness import wait_for
from tests.otel_agent import send_agent_trace


def test_trace_back_returns_the_whole_chain(env):
    for stage in ("warehouse", "processor", "collector"):
        env.start(stage)
    for stage in ("warehouse", "processor", "collector"):
        env.wait_ready(stage)

    sent = send_agent_trace(env.otlp_http, caller="alice")

    def chain():
        result = env.cli("trace-back", "--tool-call-id", sent["tool_call_id"], "--json", check=False)
        doc = json.loads(result.stdout) if result.stdout.strip() else {}
        # Both views of the call merged: client (caller) and NIM (timings).
        if doc.get("call") and doc["call"].get("ttft_ms") and doc["actions"] and doc["actions"][0]["call_id"]:
            return doc
        return None

    doc = wait_for(chain, timeout=60, what="the trace-back chain to be complete")
    action = doc["actions"][0]
    assert action["tool_name"] == "delete_record"
    assert action["tool_call_id"] == sent["tool_call_id"]
    assert action["call_id"] == sent["call_id"]
    assert action["gate"] == "policy" and action["target"] == "prod-db/orders/42"
    call = doc["call"]
    assert call["call_id"] == sent["call_id"]
    assert call["tool_call_ids"] == [sent["tool_call_id"]]
    assert call["ttft_ms"] == 42.0 and call["queue_ms"] == 3.0
    assert call["prompt_sha256"] and len(call["prompt_sha256"]) == 64
    assert sorted(call["signals"]) == ["span.client", "span.nim"]
    assert doc["caller"] == {"caller": "alice", "client_service": "ops-agent",
                             "client_address": None, "api_key_fingerprint": None}

    table = env.cli("trace-back", "--tool-call-id", sent["tool_call_id"]).stdout
    assert "delete_record" in table and "alice" in table

    calls = json.loads(env.cli("calls", "--json").stdout)
    assert [r["call_id"] for r in calls["rows"]] == [sent["call_id"]]
    assert calls["rows"][0]["actions"][0]["tool_name"] == "delete_record"
