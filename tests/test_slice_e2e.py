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


def test_a_burst_travels_as_columns_and_is_stored_once(env):
    """One export request of 300 agent traces: the processor's batch of calls and of spans is
    large enough for the columnar form (nimtrail.columnar) in each of the two audit
    partitions it is split into, the warehouse stores every call once, and `verify` covers
    them."""
    import datetime as dt

    from nimtrail import columnar, kafka_io
    from nimtrail.kafka_io import read_to_end
    from tests import scenarios as sc

    processes = {stage: env.start(stage) for stage in ("warehouse", "processor", "collector")}
    for stage in ("warehouse", "processor", "collector"):
        env.wait_ready(stage)

    world, start = sc.World(), dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    sent = {sc.agent_run(world, start + dt.timedelta(milliseconds=i), caller="burst")["call_id"]
            for i in range(300)}
    assert len(sent) >= 2 * columnar.COLUMNAR_FROM
    sc.World.send(env.otlp_http, world.take())

    def stored():
        rows = json.loads(env.cli("calls", "--caller", "burst", "--limit", "1000", "--json").stdout)["rows"]
        return rows if {r["call_id"] for r in rows} == sent else None

    rows = wait_for(stored, timeout=90, what="every call of the burst in the warehouse")
    assert len(rows) == len(sent)

    consumer = kafka_io.consumer(env.config, group_id=None)
    try:
        forms = {kind: [columnar.is_columnar(m.value) for m in read_to_end(consumer, env.config.topics.audit()[kind])]
                 for kind in ("model_call", "span")}
    finally:
        consumer.close()
    assert any(forms["model_call"]) and any(forms["span"]), forms

    report = json.loads(env.cli("verify", "--json").stdout)
    assert report["ok"], report["problems"]
    assert report["rows_checked"]["model_calls"] == len(sent)

    # Columns were made and read (pyarrow probes for pandas then): no stage loaded pandas.
    for stage, process in processes.items():
        mapped = open(f"/proc/{process.pid}/maps").read()
        assert "/pandas/" not in mapped, f"the {stage} loaded pandas"
