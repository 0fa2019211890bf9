"""Findings grouped by kind, deployment, tool and policy, on a real DuckDB file: the
findings are made by the processor's own recipes (policy checks, the clock), so the
groups are those of the shapes the pipeline writes."""

from __future__ import annotations

import time

import pytest

from nimtrail import config as config_mod, records
from processors import policy
from processors.clock import Clock, ClockLimits
from tests.warehouse_data import action, ago, call, deployment, write
from warehouse.params import BadParameter, Params
from warehouse.queries.governance import FINDINGS_PARAMS, findings
from warehouse.store import Store

SKEWED = 30
GOVERNED = deployment(tool_calling_allowed=True, destructive_tools=["delete_record"])


def _skew(call_id: str, seconds_ago: float) -> dict:
    """A clock_skew finding as a span dated year 3000 raises it, named after its call."""
    clock = Clock(ClockLimits(max_age=86400.0, max_ahead=60.0), received=time.time() - seconds_ago)
    clock.clamp("3000-01-01T00:00:00.000000Z", 32503680000 * 10**9, "unix_nano", "span",
                f"span-{call_id}", "started_at")
    clock.name_subject(0, call_id)
    (finding,) = clock.findings
    return {**finding, "observed_at": finding["detected_at"]}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    config = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(tmp_path_factory.mktemp("groups"))})
    store = Store(config.warehouse_path)
    write(store, "deployment", [GOVERNED, deployment("prod/mistral", model_id="mistral")])
    calls = [call(f"c{i}", days=i / 1000) for i in range(SKEWED)]
    calls += [call("m1", deployment_id="prod/mistral"), call("u1", deployment_id=None),
              call("u2", deployment_id=None)]
    write(store, "model_call", calls)
    found = [_skew(f"c{i}", seconds_ago=60 * (i + 1)) for i in range(SKEWED)]
    found.append(_skew("m1", seconds_ago=30))
    # The incident: destructive tools run under one auto-approving policy, an hour ago.
    incident = [action(f"a{i}", f"c{i}", days=1 / 24, gate="policy", policy_id="auto-approve")
                for i in range(3)]
    write(store, "tool_action", incident)
    for a in incident:
        found += policy.action_findings(a, calls[int(a["call_id"][1:])], GOVERNED, [])
    for call_id in ("u1", "u2"):
        found += policy.call_findings(next(c for c in calls if c["call_id"] == call_id), None)
    write(store, "finding", [{**f, "version": f["version"] or 1, "observed_at": f["observed_at"] or ago()}
                             for f in found])
    yield store
    store.close()


def _query(store: Store, **params: str) -> dict:
    con = store.reader()
    try:
        return findings(con, Params({k: [v] for k, v in params.items()}, FINDINGS_PARAMS))
    finally:
        con.close()


def test_repeats_collapse_and_the_incident_stays_on_top(store):
    groups = _query(store)["rows"]
    assert [(g["kind"], g["deployment"], g["tool"], g["policy"], g["severity"], g["count"]) for g in groups] == [
        ("ungated_action", "prod/llama", "delete_record", "auto-approve", "critical", 3),
        # the clock_skew findings name only a span and its call: the call gives the deployment
        ("unknown_deployment", "model meta/llama-3.1-8b-instruct", None, None, "high", 2),
        ("clock_skew", "prod/mistral", None, None, "low", 1),
        ("clock_skew", "prod/llama", None, None, "low", SKEWED),
    ]
    skew = groups[-1]
    every = _query(store, group="false", kind="clock_skew", deployment="prod/llama", limit="1000")["rows"]
    times = sorted(f["detected_at"] for f in every)
    assert len(every) == SKEWED and (skew["first_seen"], skew["last_seen"]) == (times[0], times[-1])
    assert skew["open"] == SKEWED
    # the latest example leads to its call, so trace-back reaches it
    newest = max(every, key=lambda f: f["detected_at"])
    assert skew["latest"]["finding_id"] == newest["finding_id"]
    assert skew["latest"]["subject_ids"] == ["span-c0", "c0"]
    assert skew["latest"]["detail"]["field"] == "started_at"


def test_individual_rows_newest_first_each_naming_its_group(store):
    every = _query(store, group="false", limit="1000")
    assert every["next_offset"] is None and len(every["rows"]) == SKEWED + 1 + 3 + 2
    times = [f["detected_at"] for f in every["rows"]]
    assert times == sorted(times, reverse=True)
    ungated = [f for f in every["rows"] if f["kind"] == "ungated_action"]
    assert {(f["deployment"], f["tool"], f["policy"]) for f in ungated} == {
        ("prod/llama", "delete_record", "auto-approve")}
    assert sorted(f["subject_ids"][0] for f in ungated) == ["a0", "a1", "a2"]


def test_filters_and_pages_of_groups(store):
    assert [g["count"] for g in _query(store, tool="delete_record")["rows"]] == [3]
    assert [g["kind"] for g in _query(store, severity="low")["rows"]] == ["clock_skew", "clock_skew"]
    assert [g["deployment"] for g in _query(store, subject_id="c1")["rows"]] == ["prod/llama", "prod/llama"]
    first = _query(store, limit="2")
    assert first["next_offset"] == 2 and len(first["rows"]) == 2
    rest = _query(store, limit="2", offset="2")
    assert rest["next_offset"] is None
    assert [g["kind"] for g in first["rows"] + rest["rows"]] == [g["kind"] for g in _query(store)["rows"]]
    assert _query(store, since=ago(minutes=5))["rows"][-1]["count"] < SKEWED  # rows filtered before grouping
    with pytest.raises(BadParameter):
        _query(store, group="maybe")


def test_resolved_findings_count_but_are_not_open(store):
    (ungated,) = _query(store, kind="ungated_action", group="false", limit="1")["rows"]
    resolved = {k: v for k, v in ungated.items() if k not in ("deployment", "tool", "policy")}
    resolved.update(version=ungated["version"] + 1, observed_at=ago(),
                    detail={**ungated["detail"], "status": "resolved"})
    write(store, "finding", [resolved])
    (group,) = _query(store, kind="ungated_action")["rows"]
    assert (group["count"], group["open"]) == (3, 2)



def test_a_group_whose_findings_are_all_resolved_comes_after_the_open_ones(store):
    """A resolved finding is a higher version of the same finding (as drift resolves a false
    unknown_deployment once the registration arrives): its group follows the open groups."""
    unknown = _query(store, group="false", kind="unknown_deployment", limit="1000")["rows"]
    write(store, "finding", [{**{k: f[k] for k in records.FIELDS["finding"]}, "version": f["version"] + 1,
                              "detail": {**f["detail"], "status": "resolved"}} for f in unknown])
    groups = _query(store)["rows"]
    assert [g["kind"] for g in groups][0] == "ungated_action"
    assert groups[-1]["kind"] == "unknown_deployment" and groups[-1]["open"] == 0
