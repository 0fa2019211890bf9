"""Usage through the running pipeline (OTel SDK → collector → Kafka → processor → warehouse
→ query API → `nimtrail usage` as a subprocess): calls with known token counts and
durations on a registered 2-GPU deployment, and one on a model nobody registered; the
usage per caller adds up to the calls the store holds."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from opentelemetry.trace import SpanKind

from nimtrail import kafka_io
from tests import scenarios as sc
from tests.harness import Env, wait_for
from tests.otel_agent import exporting_provider, send_agent_trace

pytestmark = pytest.mark.integration
GPUS = 2
NIM_E2E_S = 0.310  # what send_agent_trace's NIM span reports
STRAY_S = 2.0


def register(env: Env) -> None:
    """The llama deployment the agent trace calls, with GPUS GPUs, valid since yesterday."""
    t = env.config.topics
    kafka_io.ensure_topics(env.config, [], compacted=[t.deployments])
    producer = kafka_io.producer(env.config)
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    key, value = sc.deployment_message(sc.deployment("prod/llama-3-1-8b", 1, since, gpu_count=GPUS))
    producer.send(t.deployments, key=key, value=value)
    producer.flush()
    producer.close()


def send_unregistered_call(endpoint: str, caller: str) -> str:
    """A client's chat span to a model no deployment serves, lasting STRAY_S seconds."""
    call_id = f"chatcmpl-{uuid.uuid4().hex}"
    provider = exporting_provider(endpoint, "batch-job")
    start = dt.datetime.now(dt.timezone.utc)
    span = provider.get_tracer("job").start_span("chat acme/unlisted", kind=SpanKind.CLIENT,
                                                 start_time=sc.ns(start))
    span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "acme/unlisted",
                         "gen_ai.response.id": call_id, "gen_ai.usage.input_tokens": 7,
                         "gen_ai.usage.output_tokens": 3, "server.address": "unlisted.example.svc",
                         "server.port": 9000, "enduser.id": caller})
    span.end(end_time=sc.ns(start + dt.timedelta(seconds=STRAY_S)))
    provider.force_flush()
    provider.shutdown()
    return call_id


def test_usage_by_caller_adds_up_to_the_stored_calls(tmp_path, kafka_bootstrap):
    env = Env(tmp_path, kafka_bootstrap, processor={"join_window": "1s"})
    try:
        register(env)
        for stage in ("warehouse", "processor", "collector"):
            env.start(stage)
        for stage in ("warehouse", "processor", "collector"):
            env.wait_ready(stage)
        sent = [send_agent_trace(env.otlp_http, caller=caller)["call_id"] for caller in ("alice", "alice", "bob")]
        stray = send_unregistered_call(env.otlp_http, "carol")

        last: list[dict] = []

        def stored() -> list[dict] | None:
            rows = last[:] = json.loads(env.cli("calls", "--json").stdout)["rows"]
            by_id = {r["call_id"]: r for r in rows}
            done = (set(by_id) == {*sent, stray} and by_id[stray]["e2e_ms"] is not None
                    and all(by_id[c]["deployment_id"] and by_id[c]["e2e_ms"] == NIM_E2E_S * 1000 for c in sent))
            return rows if done else None

        try:
            calls = wait_for(stored, timeout=90, interval=1, what="every call stored, joined to its deployment")
        except AssertionError as e:
            raise AssertionError(f"{e}; stored: {last}") from None
        usage = json.loads(env.cli("usage", "--by", "caller", "--json").stdout)

        rows = {r["caller"]: r for r in usage["rows"]}
        assert set(rows) == {"alice", "bob", "carol"}
        for caller, row in rows.items():
            mine = [c for c in calls if c["caller"] == caller]
            assert row["calls"] == len(mine)
            assert row["input_tokens"] == sum(c["input_tokens"] or 0 for c in mine)
            assert row["output_tokens"] == sum(c["output_tokens"] or 0 for c in mine)
            assert row["total_tokens"] == row["input_tokens"] + row["output_tokens"]
            priced = [c for c in mine if c["deployment_id"]]
            assert row["gpu_seconds"] == pytest.approx(sum(c["e2e_ms"] / 1000 * GPUS for c in priced))
        assert (rows["alice"]["calls"], rows["alice"]["input_tokens"], rows["alice"]["output_tokens"]) == (2, 240, 48)
        assert rows["alice"]["gpu_seconds"] == pytest.approx(2 * NIM_E2E_S * GPUS)
        assert rows["alice"]["gpu_share"] == pytest.approx(2 / 3, abs=1e-3)
        # The call nobody registered: its tokens count, its GPU time is reported, not hidden.
        assert (rows["carol"]["input_tokens"], rows["carol"]["gpu_seconds"], rows["carol"]["unattributed_calls"]) \
            == (7, 0, 1)
        assert usage["unattributed"]["calls"] == usage["unattributed"]["no_deployment"] == 1
        assert usage["unattributed"]["call_seconds"] == pytest.approx(STRAY_S)
        assert usage["totals"]["calls"] == len(calls) == 4
        assert usage["totals"]["total_tokens"] == sum((c["input_tokens"] or 0) + (c["output_tokens"] or 0)
                                                      for c in calls)

        table = env.cli("usage", "--by", "deployment").stdout
        assert "prod/llama-3-1-8b" in table and "unattributed: 1 calls" in table
    finally:
        env.stop_all()
