"""Join rules, one at a time, on the pure pipeline (no Kafka)."""

from __future__ import annotations

import datetime as dt

from nimtrail.config import ProcessorConfig
from processors import normalize
from processors.forgotten import is_piece
from processors.join import Joiner
from processors.pipeline import Pipeline
from tests import corpus, scenarios as sc, trail

T0 = corpus.T0
CONFIG = ProcessorConfig(join_window=60, state_ttl=600)


def spans_of(world: sc.World) -> list[tuple[str, bytes]]:
    return [(normalize.SPANS, sc.World.otlp([s])) for s in world.take()]


def deployments(*records) -> list[tuple[str, bytes]]:
    return [(normalize.DEPLOYMENTS, sc.deployment_message(r)[1]) for r in records]


def test_calls_join_the_deployment_version_in_force_when_they_started():
    world = sc.World()
    before = sc.agent_run(world, T0 + dt.timedelta(minutes=10))
    after = sc.agent_run(world, T0 + dt.timedelta(minutes=40))
    got, _ = trail.run(spans_of(world) + deployments(*corpus.deployments()), CONFIG)
    calls = got.of("model_call")
    assert calls[before["call_id"]]["deployment_version"] == 1
    assert calls[after["call_id"]]["deployment_version"] == 2


def test_a_deployment_registered_late_re_emits_its_calls_with_a_higher_version():
    world = sc.World()
    ids = sc.agent_run(world, T0 + dt.timedelta(minutes=10))
    pipeline = Pipeline(CONFIG)
    for kind, value in spans_of(world):
        pipeline.handle(kind, value, 0)
    first = {r["call_id"]: r for r in pipeline.take().records["model_call"]}[ids["call_id"]]
    assert first["deployment_id"] is None
    pipeline.deployment(sc.deployment_message(corpus.deployments()[0])[1])
    again = pipeline.take().records
    call = {r["call_id"]: r for r in again["model_call"]}[ids["call_id"]]
    assert (call["deployment_id"], call["deployment_version"]) == ("prod/llama-3-1-8b", 1)
    assert call["version"] > first["version"]
    assert [r["deployment_id"] for r in again["deployment"]] == ["prod/llama-3-1-8b"]  # passed through


def test_model_name_identifies_a_deployment_only_while_one_serves_it():
    only_model = {"k8s": [], "service_names": [], "host_ports": [], "model_names": [sc.MODEL]}
    a = sc.deployment("team-a/llama", 1, T0 - dt.timedelta(days=1), identities=only_model)
    b = sc.deployment("team-b/llama", 1, T0 - dt.timedelta(days=1), identities=only_model)
    world = sc.World()
    ids = sc.agent_run(world, T0, server="elsewhere", nim_resource={"service.name": "unnamed"})
    one, _ = trail.run(deployments(a) + spans_of(world), CONFIG)
    assert one.of("model_call")[ids["call_id"]]["deployment_id"] == "team-a/llama"
    world2 = sc.World()
    ids2 = sc.agent_run(world2, T0, server="elsewhere", nim_resource={"service.name": "unnamed"})
    two, _ = trail.run(deployments(a) + spans_of(world2) + deployments(b), CONFIG)
    assert two.of("model_call")[ids2["call_id"]]["deployment_id"] is None  # ambiguous now


def test_an_action_that_arrives_first_is_joined_when_its_call_arrives():
    world = sc.World()
    ids = sc.agent_run(world, T0, mcp=False)
    messages = spans_of(world)
    action_first = [m for m in messages if b"execute_tool" in m[1]] + [m for m in messages if b"execute_tool" not in m[1]]
    pipeline = Pipeline(CONFIG)
    pipeline.handle(*action_first[0], 0)
    early = pipeline.take().records["tool_action"][0]
    assert early["action_id"] == ids["action_id"] and early["call_id"] is None
    for message in action_first[1:]:
        pipeline.handle(*message, 0)
    late = {r["action_id"]: r for r in pipeline.take().records["tool_action"]}[ids["action_id"]]
    assert late["call_id"] == ids["call_id"] and late["version"] > early["version"]


def test_unattributed_after_the_window_and_still_joined_when_the_call_comes():
    world = sc.World()
    ids = sc.agent_run(world, T0, mcp=False)
    messages = spans_of(world)
    action = [m for m in messages if b"execute_tool" in m[1]]
    rest = [m for m in messages if b"execute_tool" not in m[1]]
    pipeline = Pipeline(CONFIG)
    pipeline.handle(*action[0], 0)
    pipeline.take()
    pipeline.sweep(30)  # inside the window: nothing judged yet
    assert not pipeline.take().records.get("finding")
    pipeline.sweep(61)
    raised = pipeline.take().records["finding"]
    assert [(f["kind"], f["detail"]["status"]) for f in raised] == [("unattributed_action", "open")]
    for message in rest:
        pipeline.handle(*message, 100)
    out = pipeline.take().records
    action_record = {r["action_id"]: r for r in out["tool_action"]}[ids["action_id"]]
    assert action_record["call_id"] == ids["call_id"]
    resolved = [f for f in out["finding"] if f["finding_id"] == raised[0]["finding_id"]]
    assert resolved[0]["detail"]["status"] == "resolved" and resolved[0]["version"] > raised[0]["version"]


def test_caller_comes_from_the_invoke_agent_ancestor_when_the_call_span_has_none():
    world = sc.World()
    ids = sc.agent_run(world, T0, caller="erin", caller_on_chat=False)
    got, _ = trail.run(spans_of(world), CONFIG)
    assert got.of("model_call")[ids["call_id"]]["caller"] == "erin"


def test_state_restored_from_the_changelog_joins_on_without_re_emitting():
    world = sc.World()
    ids = sc.agent_run(world, T0, mcp=False)
    messages = spans_of(world)
    call_part = [m for m in messages if b"execute_tool" not in m[1]]
    action_part = [m for m in messages if b"execute_tool" in m[1]]
    first = Pipeline(CONFIG)
    for message in deployments(corpus.deployments()[0]) + call_part:
        kind, value = message
        first.deployment(value) if kind == normalize.DEPLOYMENTS else first.handle(kind, value, 0)
    first.take()
    changelog = {k: v for k, v in first.joiner.state_changes() if v is not None}
    restarted = Pipeline(CONFIG)
    restarted.deployment(deployments(corpus.deployments()[0])[0][1], passthrough=False)
    restarted.joiner.restore(changelog, 5)
    assert not restarted.take().records  # everything was produced before the restart
    restarted.handle(*action_part[0], 5)
    action = restarted.take().records["tool_action"][0]
    assert action["call_id"] == ids["call_id"]


def test_records_leave_the_state_after_the_ttl_with_tombstones():
    world = sc.World()
    sc.agent_run(world, T0, mcp=False)
    joiner_pipeline = Pipeline(CONFIG)
    for message in spans_of(world):
        joiner_pipeline.handle(*message, 0)
    joiner_pipeline.take()
    joiner: Joiner = joiner_pipeline.joiner
    joiner.state_changes()
    joiner_pipeline.sweep(61)  # settled
    joiner_pipeline.take()
    joiner.state_changes()
    joiner_pipeline.sweep(700)  # past state_ttl
    assert len(joiner) == 0
    changes = joiner.state_changes()
    tombstones = [(key, value) for key, value in changes if not is_piece(key)]
    assert tombstones and all(value is None for _, value in tombstones)
    # What left is remembered in the changelog too (processors/forgotten.py).
    assert [key for key, value in changes if is_piece(key) and value is not None]


def test_tool_servers_listed_as_urls_match_the_spans_addresses():
    from processors.policy import _server_names

    names = _server_names(["mcp://orders-mcp.tools.svc:8080", "docs-mcp"])
    assert {"orders-mcp.tools.svc:8080", "orders-mcp.tools.svc", "docs-mcp"} <= names
