"""Usage for chargeback on a real DuckDB store: calls, tokens and GPU-seconds per caller,
deployment or model, each call priced with the GPU count of the deployment version that
served it, and every call that cannot be priced counted as unattributed with its reason."""

from __future__ import annotations

import pytest

from nimtrail import config as config_mod
from tests.warehouse_data import ago, call, deployment, write
from warehouse.access import Principal
from warehouse.operations import Context, execute
from warehouse.params import BadParameter
from warehouse.store import Store

VIEWER = Principal("finance", "viewer")
CONFIG = config_mod.load(None, env={})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    store = Store(tmp_path_factory.mktemp("usage") / "audit.duckdb")
    write(store, "deployment", [
        deployment("prod/llama", 1, valid_from=ago(days=30), gpu_count=1),
        deployment("prod/llama", 2, valid_from=ago(days=2), gpu_count=4),  # the upgrade: 4 GPUs
        deployment("prod/mistral", 1, valid_from=ago(days=30), gpu_count=None, model_id="mistral-7b"),
    ])
    write(store, "model_call", [
        # alice: 2 s on v1 (1 GPU), 0.5 s on v2 (4 GPUs) -> 2 + 2 GPU-seconds
        call("a1", days=3, caller="alice", deployment_version=1, e2e_ms=2000.0, input_tokens=100,
             output_tokens=10),
        call("a2", days=1, caller="alice", deployment_version=2, e2e_ms=500.0, input_tokens=200,
             output_tokens=20),
        # bob: no e2e_ms, 1.5 s from start to end, on v2 -> 6 GPU-seconds; and a call on a
        # version nobody registered
        call("b1", days=1, caller="bob", deployment_version=2, e2e_ms=None,
             started_at=ago(days=1, minutes=1), ended_at=ago(days=1, minutes=1 - 0.025),
             input_tokens=50, output_tokens=None),
        call("b2", days=1, caller="bob", deployment_version=9, e2e_ms=300.0, input_tokens=1,
             output_tokens=1),
        # carol: a deployment without a GPU count, a call matched to no deployment, and one
        # with no duration at all
        call("c1", days=1, caller="carol", deployment_id="prod/mistral", model="mistral-7b",
             e2e_ms=1000.0, input_tokens=5, output_tokens=5),
        call("c2", days=1, caller="carol", deployment_id=None, deployment_version=None, model="mistral-7b",
             e2e_ms=700.0, input_tokens=5, output_tokens=5),
        call("c3", days=1, caller="carol", deployment_version=2, e2e_ms=None, ended_at=None,
             input_tokens=5, output_tokens=5),
        # a call long ago, outside the ranges asked below
        call("old", days=40, caller="dave", deployment_version=1, e2e_ms=10_000.0),
    ])
    yield store
    store.close()


def run(store: Store, principal: Principal = VIEWER, **params: str) -> dict:
    ctx = Context(store, store.reader(), principal, CONFIG)
    try:
        return execute(ctx, "query", "usage", {k: [v] for k, v in params.items()})
    finally:
        ctx.con.close()


def by_key(result: dict, column: str) -> dict:
    return {r[column]: r for r in result["rows"]}


def test_gpu_seconds_use_the_gpu_count_of_the_version_that_served_each_call(store):
    result = run(store, by="caller", since=ago(days=10))
    rows = by_key(result, "caller")
    assert rows["alice"]["gpu_seconds"] == pytest.approx(2.0 * 1 + 0.5 * 4)
    assert rows["bob"]["gpu_seconds"] == pytest.approx(1.5 * 4)  # ended_at - started_at, no e2e_ms
    assert rows["carol"]["gpu_seconds"] == 0
    assert "dave" not in rows  # before the range
    assert [r["caller"] for r in result["rows"]] == ["bob", "alice", "carol"]  # most GPU-seconds first
    assert result["totals"]["gpu_seconds"] == pytest.approx(10.0)
    assert rows["alice"]["gpu_share"] == pytest.approx(0.4) and rows["bob"]["gpu_share"] == pytest.approx(0.6)


def test_tokens_and_calls_count_every_call_and_their_shares_add_up(store):
    result = run(store, by="caller", since=ago(days=10))
    rows = by_key(result, "caller")
    assert (rows["alice"]["calls"], rows["alice"]["input_tokens"], rows["alice"]["output_tokens"],
            rows["alice"]["total_tokens"]) == (2, 300, 30, 330)
    assert (rows["bob"]["input_tokens"], rows["bob"]["output_tokens"], rows["bob"]["total_tokens"]) == (51, 1, 52)
    assert rows["carol"]["calls"] == 3 and rows["carol"]["total_tokens"] == 30
    assert result["totals"] == {"calls": 7, "input_tokens": 366, "output_tokens": 46, "total_tokens": 412,
                                "gpu_seconds": pytest.approx(10.0)}
    for share in ("call_share", "token_share", "gpu_share"):
        assert sum(r[share] for r in result["rows"]) == pytest.approx(1.0, abs=1e-3)


def test_calls_that_cannot_be_priced_are_counted_as_unattributed_with_their_reason(store):
    result = run(store, by="caller", since=ago(days=10))
    assert result["unattributed"] == {"calls": 4, "call_seconds": pytest.approx(0.3 + 1.0 + 0.7),
                                      "no_deployment": 2, "no_gpu_count": 1, "no_duration": 1}
    rows = by_key(result, "caller")
    assert rows["bob"]["unattributed_calls"] == 1  # the unregistered version 9
    assert rows["carol"]["unattributed_calls"] == 3
    assert rows["alice"]["unattributed_calls"] == 0


def test_grouped_by_deployment_and_by_model(store):
    deployments = by_key(run(store, by="deployment", since=ago(days=10)), "deployment_id")
    assert set(deployments) == {"prod/llama", "prod/mistral", None}
    assert deployments["prod/llama"]["gpu_seconds"] == pytest.approx(10.0)
    assert deployments["prod/llama"]["calls"] == 5 and deployments["prod/llama"]["unattributed_calls"] == 2
    assert deployments[None]["calls"] == 1 and deployments[None]["gpu_seconds"] == 0
    models = by_key(run(store, by="model", since=ago(days=10)), "model")
    assert models["mistral-7b"]["calls"] == 2 and models["mistral-7b"]["unattributed_calls"] == 2
    assert models["meta/llama-3.1-8b-instruct"]["calls"] == 5


def test_the_time_range_and_pages(store):
    everything = run(store, by="caller")
    assert by_key(everything, "caller")["dave"]["gpu_seconds"] == pytest.approx(10.0)
    recent = run(store, by="caller", since=ago(days=2))
    assert "alice" in by_key(recent, "caller") and by_key(recent, "caller")["alice"]["calls"] == 1
    assert run(store, by="caller", until=ago(days=35))["totals"]["calls"] == 1
    first = run(store, by="caller", since=ago(days=10), limit="2")
    assert [r["caller"] for r in first["rows"]] == ["bob", "alice"] and first["next_offset"] == 2
    assert first["groups"] == 3 and first["totals"]["calls"] == 7  # totals cover every page
    rest = run(store, by="caller", since=ago(days=10), limit="2", offset="2")
    assert [r["caller"] for r in rest["rows"]] == ["carol"] and rest["next_offset"] is None


def test_an_empty_range_answers_zeros(store):
    result = run(store, by="model", since="2000-01-01T00:00:00Z", until="2000-01-02T00:00:00Z")
    assert result["rows"] == [] and result["groups"] == 0
    assert result["totals"] == {"calls": 0, "input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                                "gpu_seconds": 0.0}
    assert result["unattributed"]["calls"] == 0


def test_bad_parameters_are_refused_and_every_read_is_logged(store):
    with pytest.raises(BadParameter, match="by"):
        run(store, by="team")
    with pytest.raises(BadParameter, match="until"):
        run(store, since=ago(days=1), until=ago(days=2))
    with pytest.raises(BadParameter, match="caller"):
        run(store, caller="alice")
    run(store, by="deployment")
    logged = store.reader().execute(
        "SELECT principal, status, rows FROM access_log WHERE operation = 'query/usage' ORDER BY accessed_at"
    ).fetchall()
    assert ("finance", 400, None) in logged and logged[-1] == ("finance", 200, 3)
