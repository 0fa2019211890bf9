"""Retention on a real DuckDB file: legal holds keep what they cover, everything else that
expired goes, the report shows both, and the ledger still verifies."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import pytest

from nimtrail.config import Duration, RetentionConfig
from tests.warehouse_data import NOW, action, call, checkpointer, deployment, sample, write
from warehouse import holds, report, retention
from warehouse.access import Principal
from warehouse.params import Params
from warehouse.store import Store
from warehouse.verify import verify

DAY = 86400
POLICY = RetentionConfig(metadata=Duration(100 * DAY), content=Duration(30 * DAY),
                         samples=Duration(7 * DAY), samples_rollup=Duration(60 * DAY),
                         access_log=Duration(100 * DAY), interval=Duration(0))
LEGAL = Principal("legal-team", "compliance")


def _count(store: Store, sql: str, args: list | None = None) -> int:
    return store.reader().execute(sql, args or []).fetchall()[0][0]


def _hold(store: Store, **values: str) -> dict:
    return holds.add(store, LEGAL, Params({k: [v] for k, v in values.items()},
                                          {"deployment_id", "caller", "from", "to", "reason"}))["hold"]


@pytest.fixture
def world(tmp_path: Path):
    data = tmp_path / "data"
    store = Store(data / "audit.duckdb")
    write(store, "deployment", [deployment(version=1), deployment(version=2, valid_from="2020-01-01T00:00:00Z"),
                                deployment(version=3, valid_from=NOW.strftime("%Y-%m-%dT%H:%M:%SZ"))])
    old = [call(f"old-alice-{i}", days=150, caller="alice") for i in range(3)]
    old += [call(f"old-bob-{i}", days=150, caller="bob", deployment_version=2) for i in range(4)]
    mid = [call(f"mid-{who}", days=45, caller=who) for who in ("alice", "bob")]
    new = [call("new-bob", days=1, caller="bob")]
    write(store, "model_call", old + mid + new)
    write(store, "tool_action", [action("act-old-alice", "old-alice-0", days=150),
                                 action("act-old-bob", "old-bob-0", days=150),
                                 action("act-mid-bob", "mid-bob", days=45)])
    hour = (NOW - dt.timedelta(days=10)).replace(minute=0, second=0)
    in_hour = [sample(f"s-{m}", (hour + dt.timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "vllm:num_requests_running", None, value=float(m)) for m in range(0, 60, 10)]
    ancient = [sample("s-ancient", (NOW - dt.timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "vllm:num_requests_running", None, value=1.0)]
    write(store, "metric_sample", in_hour + ancient)
    cp = checkpointer(store, data)
    cp.checkpoint()
    yield store, data, cp
    store.close()


def test_legal_hold_keeps_what_it_covers_and_the_rest_is_purged(world):
    store, data, cp = world
    hold = _hold(store, caller="alice", reason="litigation 2025-17")

    result = retention.apply(store, POLICY, LEGAL)
    by_step = {(s["policy"], s["table"], s["action"]): s for s in result["steps"]}
    assert by_step[("metadata", "model_calls", "delete")]["rows"] == 4  # bob's old calls
    assert by_step[("metadata", "model_calls", "delete")]["held_rows"] == 3  # alice's, on hold
    names = [r[0] for r in store.reader().execute("SELECT call_id FROM model_calls ORDER BY 1").fetchall()]
    assert names == ["mid-alice", "mid-bob", "new-bob", "old-alice-0", "old-alice-1", "old-alice-2"]
    # bob's old action went with the retention; alice's stays
    assert _count(store, "SELECT count(*) FROM tool_actions WHERE action_id = 'act-old-bob'") == 0
    assert _count(store, "SELECT count(*) FROM tool_actions WHERE action_id = 'act-old-alice'") == 1
    # content: nulled where expired and not held; metadata of those rows stays
    content = dict(store.reader().execute("SELECT call_id, prompt_text FROM model_calls").fetchall())
    assert content["mid-bob"] is None and content["mid-alice"] == "please delete order 42"
    assert content["old-alice-0"] == "please delete order 42" and content["new-bob"]
    assert _count(store, "SELECT count(*) FROM tool_actions WHERE arguments IS NOT NULL "
                         "AND action_id = 'act-mid-bob'") == 0
    # deployments: version 2 is superseded and no remaining call ran on it; 1 still has calls
    versions = [r[0] for r in store.reader().execute("SELECT version FROM deployments ORDER BY 1").fetchall()]
    assert versions == [1, 3]
    # samples: one per series-hour kept after 7 days, all gone after 60
    kept = store.reader().execute("SELECT sample_id FROM metric_samples").fetchall()
    assert kept == [("s-50",)]

    # every purge is on record and in the ledger; the chain still verifies
    purges = store.reader().execute("SELECT policy, tbl, action, rows, held_rows FROM retention_purges "
                                    "ORDER BY purge_id").fetchall()
    assert ("metadata", "model_calls", "delete", 4, 3) in purges
    assert ("content", "model_calls", "null_content", 5, 4) in purges  # before metadata ran
    assert store.ledger.head.kind == "purge"
    cp.checkpoint()
    outcome = verify(store.reader(), data)
    assert outcome["ok"], outcome["problems"]

    # the report shows what is held, under hold, purged, and the hold itself
    doc = report.build(store.reader(), POLICY, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=1))
    held = {(h["data_class"], h["table_name"]): h for h in doc["held"]}
    assert held[("metadata", "model_calls")]["rows"] == 6
    assert held[("metadata", "model_calls")]["held_rows"] == 4  # every alice call
    assert held[("metadata", "model_calls")]["oldest"][:10] == (NOW - dt.timedelta(days=150)).strftime("%Y-%m-%d")
    assert {p["tbl"] for p in doc["purges"]} >= {"model_calls", "tool_actions", "metric_samples", "deployments"}
    assert [h["hold_id"] for h in doc["holds_in_force"]] == [hold["hold_id"]]
    csv, rows = report.encode(doc, "csv")
    sections = {line.split(",")[0] for line in csv.decode().splitlines()[1:]}
    assert sections == {"held", "purge", "hold", "ledger"}
    assert rows == len(csv.decode().splitlines()) - 1


def test_dry_run_counts_and_changes_nothing(world):
    store, _data, _cp = world
    head = store.ledger.head
    before = _count(store, "SELECT count(*) FROM model_calls WHERE prompt_text IS NOT NULL")
    result = retention.apply(store, POLICY, LEGAL, dry_run=True)
    assert result["dry_run"] and result["rows"] > 0
    assert store.ledger.head == head
    assert _count(store, "SELECT count(*) FROM model_calls WHERE prompt_text IS NOT NULL") == before
    assert _count(store, "SELECT count(*) FROM retention_purges") == 0


def test_released_hold_lets_retention_purge_and_both_versions_are_kept(world):
    store, data, _cp = world
    hold = _hold(store, deployment_id="prod/llama", **{"from": "2000-01-01", "reason": "audit request"})
    retention.apply(store, POLICY, LEGAL)
    assert _count(store, "SELECT count(*) FROM model_calls") == 10  # everything on prod/llama held
    holds.remove(store, LEGAL, Params({"hold_id": [hold["hold_id"]], "reason": ["closed"]},
                                      {"hold_id", "reason"}))
    second = retention.apply(store, POLICY, LEGAL)
    assert second["held_rows"] == 0
    assert _count(store, "SELECT count(*) FROM model_calls") == 3  # only the young ones
    versions = store.reader().execute("SELECT version, released_by FROM legal_holds").fetchall()
    assert versions == [(2, "legal-team")]
    lines = _count(store, "SELECT count(*) FROM ledger_rows WHERE tbl = 'legal_holds'")
    assert lines == 2  # added, released
    outcome = verify(store.reader(), data)
    assert outcome["ok"], outcome["problems"]


def test_a_hold_needs_a_reason_and_a_criterion(world):
    store, _data, _cp = world
    from warehouse.params import BadParameter

    with pytest.raises(BadParameter, match="reason"):
        _hold(store, caller="alice")
    with pytest.raises(BadParameter, match="deployment_id"):
        _hold(store, reason="why not")
    with pytest.raises(BadParameter, match="'to'"):
        _hold(store, reason="r", **{"from": "2025-02-01", "to": "2025-01-01"})


def test_report_exports_json_and_parquet_that_say_the_same(world):
    store, _data, _cp = world
    retention.apply(store, POLICY, LEGAL)
    doc = report.build(store.reader(), POLICY, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=1))
    as_json, _ = report.encode(doc, "json")
    assert orjson.loads(as_json)["purges"] == doc["purges"]
    import io

    import polars as pl

    parquet, rows = report.encode(doc, "parquet")
    frame = pl.read_parquet(io.BytesIO(parquet))
    assert frame.height == rows
    assert frame.filter(pl.col("section") == "purge")["rows"].sum() == sum(p["rows"] for p in doc["purges"])


def test_a_record_claiming_1970_is_not_purged_on_arrival(tmp_path: Path):
    """Expiry is judged by the later of the time a record claims and the time the pipeline
    observed it: a sender's clock alone never makes a record expire."""
    store = Store(tmp_path / "audit.duckdb")
    epoch = "1970-01-01T00:00:00.000000Z"
    write(store, "model_call", [call("c-1970", started_at=epoch, ended_at=epoch, observed_at=NOW.isoformat()),
                                call("c-expired", days=1000, caller="bob")])
    write(store, "tool_action", [action("a-1970", "c-1970", started_at=epoch, observed_at=NOW.isoformat())])
    write(store, "metric_sample", [{**sample("s-1970", epoch, "vllm:num_requests_running", None, value=1.0),
                                    "observed_at": NOW.isoformat()}])
    try:
        result = retention.apply(store, POLICY, LEGAL)
        assert result["rows"] >= 1  # the call claimed and observed 1000 days ago went
        left = {r[0] for r in store.reader().execute("SELECT call_id FROM model_calls").fetchall()}
        assert left == {"c-1970"}
        assert _count(store, "SELECT count(*) FROM tool_actions WHERE action_id = 'a-1970'") == 1
        assert _count(store, "SELECT count(*) FROM metric_samples WHERE sample_id = 's-1970'") == 1
        # its content class is judged the same way: the prompt arrived today
        assert _count(store, "SELECT count(*) FROM model_calls WHERE prompt_text IS NOT NULL") == 1
    finally:
        store.close()
