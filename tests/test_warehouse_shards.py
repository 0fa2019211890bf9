"""Two warehouse shards on the real broker, beside one unsharded warehouse reading the same
audit topics: each shard stores only the keys of its partitions, the front (shard 0)
answers the merged operations exactly as the one store does, `verify` covers both shards
and names the one that was tampered with."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from nimtrail import api_client, kafka_io
from nimtrail.api_client import ApiError
from tests import scenarios as sc
from tests.corpus import T0
from tests.harness import Env, http_ok, wait_for
from tests.test_processors_kafka import register_deployments
from warehouse import shards

pytestmark = pytest.mark.integration
RUNS = 24
AUDIT_TABLES = ("model_calls", "tool_actions", "findings", "metric_samples", "trace_spans")


def _pages(api: str, limit: int = 7) -> list[dict[str, Any]]:
    out, offset = [], 0
    while offset is not None:
        page = api_client.query(api, "calls", {"limit": limit, "offset": offset})
        out += page["rows"]
        offset = page["next_offset"]
    return out


def _by_ids(doc: dict[str, Any]) -> dict[str, Any]:
    """A trace-back with its lists in id order: one store breaks ties of equal times in
    whichever order it read the rows."""
    return {**doc, "actions": sorted(doc["actions"], key=lambda a: a["action_id"]),
            "findings": sorted(doc["findings"], key=lambda f: f["finding_id"])}


def _scrape(env: Env, scrapes: int = 12) -> None:
    """A NIM's metrics and its two GPUs' DCGM figures every 15 s: a series' samples are
    keyed by scrape, so spread over both shards."""
    producer = kafka_io.producer(env.config)
    for i in range(scrapes):
        samples = [{"name": "DCGM_FI_DEV_GPU_UTIL", "labels": {"gpu": str(g)}, "value": 40.0 + 7 * g + (i * 13) % 50,
                    "timestamp": None} for g in (0, 1)]
        samples += [{"name": "vllm:time_to_first_token_seconds_bucket", "labels": {"model_name": sc.MODEL, "le": le},
                     "value": float(c * (i + 1)), "timestamp": None} for le, c in (("0.05", 1), ("0.5", 3), ("+Inf", 4))]
        message = sc.scrape_message("http://llama:8000/v1/metrics", T0 + dt.timedelta(seconds=15 * i), samples)
        producer.send(env.config.topics.scrapes, key=b"llama", value=message)
    producer.flush()
    producer.close()


def _keys(path: Path, table: str, column: str) -> list[str]:
    with duckdb.connect(str(path), read_only=True) as con:
        return [r[0] for r in con.execute(f"SELECT {column} FROM {table}").fetchall()]


def test_two_shards_hold_one_warehouses_trail_and_the_front_answers_as_it_does(tmp_path: Path,
                                                                                 kafka_bootstrap: str):
    (tmp_path / "sharded").mkdir()
    (tmp_path / "single").mkdir()
    env = Env(tmp_path / "sharded", kafka_bootstrap, processor={"join_window": "1s"},
              warehouse={"shards": 2, "checkpoint_interval": "2s"})
    topics = {k: getattr(env.config.topics, k) for k in env.config.topics.__dataclass_fields__}
    single = Env(tmp_path / "single", kafka_bootstrap, topics=topics)
    shard_api = f"http://127.0.0.1:{env.ports['api'] + shards.port_offset(1)}"
    try:
        register_deployments(env)
        env.start("warehouse", args=("--shard", "0"), log_name="warehouse-0")
        env.start("warehouse", args=("--shard", "1"), log_name="warehouse-1")
        single.start("warehouse")
        for stage in ("processor", "collector"):
            env.start(stage)
        for stage in ("processor", "collector"):
            env.wait_ready(stage)
        for api in (env.api, shard_api, single.api):
            wait_for(lambda: http_ok(f"{api}/healthz"), 60, what=f"the warehouse at {api}")

        world = sc.World()
        sent = []
        for i in range(RUNS):
            # every third tool run in a trace of its own: only its tool-call id names its call
            # and the last one from a host whose clock is years ahead: its records get the
            # receive time and clock_skew findings whose group comes from the call they are about
            start = T0 + dt.timedelta(seconds=i) if i < RUNS - 1 else T0 + dt.timedelta(days=5 * 365)
            sent.append(sc.agent_run(world, start, caller=f"user-{i % 5}", tool_in_own_trace=i % 3 == 0))
        sc.World.send(env.otlp_http, world.take())
        _scrape(env)

        def settled() -> list[dict[str, Any]] | None:
            front, one = _pages(env.api), _pages(single.api)
            linked = all(r["actions"] for r in one)
            return front if len(one) == RUNS and linked and front == one else None

        calls = wait_for(settled, 90, interval=0.5, what="the front's calls pages to equal one store's")
        assert {r["call_id"] for r in calls} == {s["call_id"] for s in sent}

        # (the two readers are apart: a finding may reach one a poll before the other)
        findings = 0
        for s in sent:
            for given in ({"tool_call_id": s["tool_call_id"]}, {"call_id": s["call_id"]}):
                front = wait_for(lambda: (lambda f, o: f if f == o else None)(
                    _by_ids(api_client.query(env.api, "trace-back", given)),
                    _by_ids(api_client.query(single.api, "trace-back", given))), 30,
                    what=f"the front's trace-back {given} to equal one store's")
                assert front["found"] and front["actions"] and front["call"]
                findings += len(front["findings"])
        assert findings  # findings about calls and actions, each in the shard of its own key

        def same(name: str, given: dict[str, str]) -> dict[str, Any]:
            return wait_for(lambda: (lambda f, o: f if f == o else None)(
                api_client.query(env.api, name, given), api_client.query(single.api, name, given)), 30,
                what=f"the front's {name} {given} to equal one store's")

        for s in sent:  # a trace's spans are keyed by span: spread over both shards
            for trace_id in {s["trace_id"], s["action_trace_id"]}:
                assert same("trace", {"trace_id": trace_id})["found"]
        # the MCP session every run's tool call went through: the trace its MCP spans are in
        assert sorted(same("session", {"session_id": "s-1"})["traces"]) == sorted(
            s["action_trace_id"] for s in sent)
        assert api_client.query(env.api, "facets") == api_client.query(single.api, "facets")

        def deployments_agree() -> bool:
            """Each version with the calls it served, counted in both shards."""
            for given in ({}, {"versions": "all"}, {"versions": "all", "limit": 2, "offset": 1},
                          {"deployment_id": "prod/llama-3-1-8b"}):
                if api_client.query(env.api, "deployments", given) != api_client.query(
                        single.api, "deployments", given):
                    return False
            served = api_client.query(env.api, "deployments", {"versions": "all"})["rows"]
            return sum(r["calls"] for r in served) == RUNS

        wait_for(deployments_agree, 30, what="the front's deployments, with the calls each served, "
                                             "to equal one store's")

        for by in ("profile", "deployment", "model"):
            for bucket in ("none", "1m"):
                found = same("gpu-metrics", {"by": by, "bucket": bucket})
                assert found["rows"] and all(r["gpu_util_pct"] is not None for r in found["rows"])
        for by in ("profile", "deployment", "model"):
            for given in ({}, {"bucket": "1m"}, {"source": "metrics"}, {"precision": "estimate"},
                          {"precision": "estimate", "bucket": "1h"}):
                found = same("latency", {"by": by, **given})
                assert found["rows"] and all(r["ttft_ms_n"] for r in found["rows"]), (by, given, found)
        assert "rows" in same("latency-changes", {})
        for by in ("caller", "deployment", "model"):
            assert same("usage", {"by": by})["totals"]["calls"] == RUNS
        assert same("usage", {"by": "caller", "limit": 2, "offset": 1})["next_offset"] == 3

        # a finding's group comes from what it is about, in whichever shard that is
        for given in ({}, {"group": "false"}, {"group": "false", "limit": 3, "offset": 2},
                      {"kind": "ungated_action"}, {"deployment": "prod/llama-3-1-8b"}, {"limit": 1, "offset": 1}):
            assert same("findings", given)["rows"], given
        skewed = same("findings", {"kind": "clock_skew"})["rows"]
        assert {(g["deployment"], g["tool"]) for g in skewed} >= {("prod/llama-3-1-8b", "delete_record"),
                                                                  ("prod/llama-3-1-8b", None)}, skewed

        # an action is listed with its call's columns and the findings about both, anywhere
        for given in ({}, {"order": "risk"}, {"flagged": "true"}, {"caller": "user-1"},
                      {"finding_kind": "ungated_action", "order": "risk", "limit": 5, "offset": 3},
                      {"tool_name": "delete_record", "limit": 4, "offset": 4}):
            assert same("actions", given)["rows"], given

        # Compliance: holds are the front's, and every shard counts and purges by them.
        hold = {"caller": "user-1", "reason": "incident review"}
        for api in (env.api, single.api):
            assert api_client.action(api, "hold-add", hold)["hold"]["released_at"] is None
        assert len(api_client.query(env.api, "holds")["rows"]) == 1
        period = {"from": "2026-03-01T00:00:00Z", "to": "2026-12-31T00:00:00Z"}
        front_report, one_report = (api_client.query(api, "retention-report", period) for api in (env.api, single.api))
        held = {(h["data_class"], h["table_name"]): h for h in front_report["held"]}
        for h in one_report["held"]:
            if h["table_name"] == "access_log":
                continue  # (each store's own)
            mine = held[(h["data_class"], h["table_name"])]
            assert (mine["rows"], mine["oldest"], mine["newest"]) == (h["rows"], h["oldest"], h["newest"]), h
        # a caller hold keeps that caller's calls (in both shards) exactly as one store does
        calls_held = [h["held_rows"] for h in front_report["held"] if h == held[("metadata", "model_calls")]]
        assert calls_held == [h["held_rows"] for h in one_report["held"]
                              if (h["data_class"], h["table_name"]) == ("metadata", "model_calls")] == [5]
        assert [s["shard"] for s in front_report["shards"]] == ["shard 0 of 2", "shard 1 of 2"]
        dry = api_client.action(env.api, "retention-apply", {"dry_run": True})
        assert dry["dry_run"] and len(dry["shards"]) == 2 and dry["rows"] == 0
        for table in ("model_calls", "tool_actions", "deployments"):
            front_day, _ = api_client.export(env.api, "archive", {"day": "2026-03-03", "table": table})
            one_day, _ = api_client.export(single.api, "archive", {"day": "2026-03-03", "table": table})
            assert pl.read_parquet(front_day).equals(pl.read_parquet(one_day)), table

        with pytest.raises(ApiError) as not_front:
            api_client.query(shard_api, "calls")
        assert not_front.value.status == 404 and "shard 1 of 2" in str(not_front.value)

        # The CLI as a user types it goes through the front.
        listed = json.loads(env.cli("calls", "--json", "--limit", "1000").stdout)
        assert [r["call_id"] for r in listed["rows"]] == [r["call_id"] for r in calls]
        checked = wait_for(lambda: (lambda d: d if d["digests"]["checked"] >= 2 else None)(
            json.loads(env.cli("verify", "--json").stdout)), 30, what="both shards to have signed")
        assert checked["ok"], checked["problems"]
        assert [s["shard"] for s in checked["shards"]] == ["shard 0 of 2", "shard 1 of 2"]
        # as a person reads it, with the one key every shard signs with pinned
        key = env.dir / "data" / "keys" / "ledger-ed25519.pub"
        printed = env.cli("verify", "--public-key", str(key)).stdout.splitlines()
        assert [line.split(": verified: ")[0] for line in printed[:2]] == ["shard 0 of 2", "shard 1 of 2"]
        one = json.loads(single.cli("verify", "--json").stdout)["rows_checked"]
        for table in AUDIT_TABLES:  # (the access log and checkpoints are each store's own)
            assert checked["rows_checked"][table] == one[table], table
        # every shard holds every governance record
        assert [s["rows_checked"]["deployments"] for s in checked["shards"]] == [one["deployments"]] * 2
    finally:
        env.stop_all()
        single.stop_all()

    # Each shard holds the keys of its own partitions, and both hold some.
    partitions = len(kafka_io.partitions_of(kafka_io.consumer(env.config, group_id=None),
                                            env.config.topics.calls))
    files = [env.dir / "data" / "shards" / f"{i}-of-2" / "audit.duckdb" for i in (0, 1)]
    for shard, path in enumerate(files):
        for table, column in (("model_calls", "call_id"), ("tool_actions", "action_id")):
            keys = _keys(path, table, column)
            assert keys, f"shard {shard} holds no {table}"
            assert {kafka_io.partition_of(k, partitions) % 2 for k in keys} == {shard}

    # Tampering with one shard's row is found offline and named with the shard.
    with duckdb.connect(str(files[1])) as con:
        con.execute("UPDATE model_calls SET caller = 'mallory' WHERE call_id = "
                    "(SELECT min(call_id) FROM model_calls)")
    result = env.cli("verify", "--offline", "--json", check=False)
    doc = json.loads(result.stdout)
    assert result.returncode == 1 and not doc["ok"]
    assert doc["first_problem"].startswith("shard 1 of 2: model_calls"), doc["first_problem"]
    assert all(p["shard"] == "shard 1 of 2" for p in doc["problems"])
