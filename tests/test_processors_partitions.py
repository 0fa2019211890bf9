"""The join split over evidence partitions gives a single joiner's records, field for field.

Pure: every partition's joiner runs in this process (processors.partitions.Partitioned),
fed the worlds whose joins cross what one partition holds — NIM log lines joined by
request id, NIM spans in a trace of their own, tool runs whose trace context broke,
parentage-only links, a deployment version registered mid-stream — in the finest and in
shuffled interleavings, below the state's caps and with the state full. The final trail
(each record at its highest version) must equal one joiner's, versions included.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from typing import Any

import orjson
import pytest

from nimtrail import config as config_mod, records
from processors import evidence as ev, normalize
from processors.evidence import Evidence
from processors.partitions import LINKS, WANTED, PartitionJoiner, Partitioned, best_link, from_wire, route_key, wire_form
from processors.pipeline import Pipeline
from tests import corpus, scenarios as sc

T0 = corpus.T0
SHAPES = ({}, {"tool_in_own_trace": True}, {"link_by_id": False, "gate": "human"}, {"nim_in_own_trace": True},
          {"nim_in_own_trace": True, "tool_in_own_trace": True}, {"mcp": False, "caller_on_chat": True},
          # a NIM no deployment names: its call's link carries no deployment
          {"server": "unknown.nim.svc", "model": "acme/unknown", "nim_resource": {"service.name": "nim-unknown"},
           "tool_in_own_trace": True})


def hard_world(rounds: int, seed: int) -> list[tuple[str, bytes]]:
    """Messages as (normalize kind, value): each agent run's spans one per message, in a
    random order, some runs' spans batched together the way an SDK exporter sends them;
    NIM log lines for every call; version 2 of the deployment registered halfway."""
    rng = random.Random(seed)
    world = sc.World()
    v1, v2 = corpus.deployments()[:2]
    messages: list[tuple[str, bytes]] = [(normalize.DEPLOYMENTS, sc.deployment_message(v1)[1])]
    for round_no in range(rounds):
        when = T0 + dt.timedelta(minutes=round_no)
        batch: list[tuple[str, bytes]] = []
        lines = []
        for i, shape in enumerate(SHAPES):
            ids = sc.agent_run(world, when + dt.timedelta(seconds=i), caller=f"user{rng.randrange(4)}", **shape)
            spans = world.take()
            if rng.random() < 0.3:
                batch.append((normalize.SPANS, sc.World.otlp(spans)))
            else:
                batch += [(normalize.SPANS, sc.World.otlp([s])) for s in spans]
            lines += [f"INFO {when:%Y-%m-%d %H:%M}:0{i}.000 logger.py:1] Received request {ids['call_id']}: params: x",
                      f"INFO {when:%Y-%m-%d %H:%M}:0{i}.400 logger.py:2] Finished request {ids['call_id']}."]
        batch.append((normalize.NIMLOGS, sc.nimlog_message(lines, received=when, first_offset=round_no * 10_000)))
        rng.shuffle(batch)
        messages += batch
        if round_no == rounds // 2:
            messages.append((normalize.DEPLOYMENTS, sc.deployment_message(v2)[1]))
    return messages


def final_trail(pipeline: Pipeline | list[Pipeline], messages: list[tuple[str, bytes]], batch: int,
                exchange=lambda now: False) -> dict[tuple, dict[str, Any]]:
    """Every record the pipeline (or the members' pipelines together, each handed every
    other message, the evidence topic being `exchange`: whether it moved any) emitted at its highest version,
    without `observed_at`, after everything settled."""
    members = pipeline if isinstance(pipeline, list) else [pipeline]
    trail: dict[tuple, dict[str, Any]] = {}

    def take(now: float) -> None:
        while True:
            for member in members:
                for kind, emitted in member.take().records.items():
                    for record in emitted:
                        key = (kind, *(record[f] for f in records.KEYS[kind]))
                        if key not in trail or record.get("version", 0) >= trail[key].get("version", 0):
                            trail[key] = {k: v for k, v in record.items() if k != "observed_at"}
            if not exchange(now):
                return

    for i, (kind, value) in enumerate(messages):
        if kind == normalize.DEPLOYMENTS:
            for member in members:
                member.deployment(value)
        else:
            members[i % len(members)].handle(kind, value, float(i // batch), received=T0.timestamp())
        if i % batch == batch - 1:
            take(float(i // batch))
            for member in members:
                member.sweep(float(i // batch) - 1)
    take(float(len(messages)))
    for member in members:
        member.sweep(float("inf"))
    take(float("inf"))
    return trail


def _differences(one: dict[tuple, dict], split: dict[tuple, dict]) -> list[str]:
    out = [f"missing {k}" for k in one if k not in split] + [f"extra {k}" for k in split if k not in one]
    for key in one.keys() & split.keys():
        fields = {f for f in one[key] if one[key][f] != split[key].get(f)}
        if fields:
            out.append(f"{key}: " + ", ".join(f"{f}: {one[key][f]!r} != {split[key].get(f)!r}" for f in sorted(fields)))
    return sorted(out)


@pytest.mark.parametrize("partitions", [2, 3, 7])
@pytest.mark.parametrize("batch", [1, 17])
def test_partitioned_joiners_emit_one_joiners_trail(partitions: int, batch: int):
    config = config_mod.ProcessorConfig()
    messages = hard_world(rounds=6, seed=partitions * 100 + batch)
    one = final_trail(Pipeline(config), messages, batch)
    split = final_trail(Pipeline(config, joiner=Partitioned(config, partitions)), messages, batch)
    kinds = {k[0] for k in one}
    assert {"model_call", "tool_action", "finding", "span"} <= kinds
    assert _differences(one, split) == []


def test_members_each_holding_some_partitions_hand_their_own_over_in_process_and_emit_one_joiners_trail():
    """Two members over three partitions, as the service runs them: what one places for a
    partition it holds goes straight to that joiner; only the rest is left for the evidence
    topic (here: JSON, to the member holding it). Together: one joiner's trail."""
    config = config_mod.ProcessorConfig()
    messages = hard_world(rounds=6, seed=5)
    members = [Pipeline(config, joiner=Partitioned(config, 3, held=held)) for held in ((0, 1), (2,))]
    crossed = []

    def exchange(now: float) -> bool:
        sent = {member: member.joiner.take_pending() for member in members}
        for member, placed in sent.items():
            assert not placed.keys() & member.joiner.joiners.keys(), "what it holds is handed over in process"
            for partition, items in placed.items():
                [holder] = [m for m in members if partition in m.joiner.joiners]
                crossed.append(partition)
                holder.joiner.deliver(partition, from_wire(orjson.loads(orjson.dumps(wire_form(items)))), now)
        return any(sent.values())

    split = final_trail(members, messages, 7, exchange)
    assert _differences(final_trail(Pipeline(config), messages, 7), split) == []
    assert set(crossed) == {0, 1, 2}


def test_with_the_state_full_partitioned_joiners_share_one_joiners_room_and_emit_its_trail():
    """Records settle early and leave the state. Each of three partitions holds a third of
    the room one joiner has (what a full state gives up depends on its room)."""
    config = dataclasses.replace(config_mod.ProcessorConfig(), state_max_entries=120)
    messages = hard_world(rounds=8, seed=11)
    split_pipeline = Pipeline(config, joiner=Partitioned(config, 3))
    split = final_trail(split_pipeline, messages, 5)
    one = final_trail(Pipeline(config), messages, 5)
    assert {j.max_entries for j in split_pipeline.joiner.joiners.values()} == {40}
    assert any(j.forgotten for j in split_pipeline.joiner.joiners.values())  # the caps were reached
    assert _differences(one, split) == []


@pytest.mark.parametrize("partitions", [2, 5])
def test_an_action_long_after_its_call_left_the_state_joins_it_through_the_links_home(partitions: int):
    """The call settles and leaves by its TTL before its tool runs in a trace of its own: one
    joiner joins it through the forgotten link; split, through the link the call's owner
    published to the tool-call id's home."""
    config = dataclasses.replace(config_mod.ProcessorConfig(), join_window=1, state_ttl=2)
    world = sc.World()
    runs = [sc.agent_run(world, T0 + dt.timedelta(seconds=i), tool_in_own_trace=True) for i in range(6)]
    spans = world.take()
    action_traces = {r["action_trace_id"] for r in runs}
    calls = [s for s in spans if format(s.context.trace_id, "032x") not in action_traces]
    actions = [s for s in spans if format(s.context.trace_id, "032x") in action_traces]
    messages = ([(normalize.DEPLOYMENTS, sc.deployment_message(corpus.deployments()[0])[1])]
                + [(normalize.SPANS, sc.World.otlp([s])) for s in calls]
                + [(normalize.SPANS, sc.World.otlp([])) for _ in range(40)]  # time passes: the calls leave
                + [(normalize.SPANS, sc.World.otlp([s for s in actions if format(s.context.trace_id, "032x") == t]))
                   for t in sorted(action_traces)])
    one_pipeline, split_pipeline = Pipeline(config), Pipeline(config, joiner=Partitioned(config, partitions))
    one = final_trail(one_pipeline, messages, 2)
    split = final_trail(split_pipeline, messages, 2)
    assert one_pipeline.joiner.forgotten.call(runs[0]["tool_call_id"]) is not None  # it did leave
    joined = {r["action_id"]: r["call_id"] for (kind, *_), r in one.items() if kind == "tool_action"}
    assert joined == {r["action_id"]: r["call_id"] for r in runs}
    assert _differences(one, split) == []


def test_links_are_kept_only_for_the_tool_calls_an_action_elsewhere_waits_for():
    """A call whose tool ran in its own trace costs no entry at any tool-call id's home;
    an action whose trace broke asks every partition for its id, and its call's owner
    publishes the link there, which the action joins, as one joiner joins it."""
    config = config_mod.ProcessorConfig()
    world = sc.World()
    together = [sc.agent_run(world, T0 + dt.timedelta(seconds=i)) for i in range(6)]
    apart = [sc.agent_run(world, T0 + dt.timedelta(seconds=10 + i), tool_in_own_trace=True) for i in range(6)]
    messages = ([(normalize.DEPLOYMENTS, sc.deployment_message(corpus.deployments()[0])[1])]
                + [(normalize.SPANS, sc.World.otlp([s])) for s in world.take()])
    split = final_trail(Pipeline(config, joiner=Partitioned(config, 5)), messages, 3)
    assert _differences(final_trail(Pipeline(config), messages, 3), split) == []
    # The state once all is joined, before the window passes and it leaves.
    joined_now = Partitioned(config, 5)
    pipe = Pipeline(config, joiner=joined_now)
    for kind, value in messages:
        if kind == normalize.DEPLOYMENTS:
            pipe.deployment(value)
        else:
            pipe.handle(kind, value, 0.0, received=T0.timestamp())
    pipe.take()
    held = {entry_id: partition for partition, joiner in joined_now.joiners.items() for entry_id in joiner.entries}
    home = joined_now.joiners[0].home
    assert not any(f"{LINKS}|{run['tool_call_id']}" in held for run in together)
    waited = [run for run in apart if home(run["action_trace_id"]) != home(run["trace_id"])]
    assert waited, "some action's trace is placed apart from its call's"
    for run in waited:
        assert held[f"{LINKS}|{run['tool_call_id']}"] == home(run["tool_call_id"])
        assert all(f"{WANTED}|{run['tool_call_id']}" in j.entries for j in joined_now.joiners.values())
    joined = {r["action_id"]: r["call_id"] for (kind, *_), r in split.items() if kind == "tool_action"}
    assert joined == {r["action_id"]: r["call_id"] for r in together + apart}


def test_evidence_is_placed_by_trace_and_log_lines_by_their_call():
    span = Evidence(ev.MODEL_CALL, "chatcmpl-1", ev.SPAN_CLIENT, "s1", {"trace_id": "t1", "span_id": "s1"})
    line = Evidence(ev.MODEL_CALL, "chatcmpl-1", ev.LOG_NIM, "f:1", {})
    assert route_key(span) == "t1" and route_key(line) == "chatcmpl-1"


def test_a_call_is_owned_where_its_callers_trace_is_once_its_home_answered():
    """A call whose NIM span is in a trace of its own: its evidence meets at its home and
    reaches both traces' partitions; the partition of the caller's trace owns it once the
    home has sent it all the home held; the copies emit nothing."""
    config = config_mod.ProcessorConfig()
    joined = Partitioned(config, 8)
    client = Evidence(ev.MODEL_CALL, "c", ev.SPAN_CLIENT, "s1", {"trace_id": "trace-a", "span_id": "s1"})
    nim = Evidence(ev.MODEL_CALL, "c", ev.SPAN_NIM, "s2", {"trace_id": "trace-b", "span_id": "s2"})
    line = Evidence(ev.MODEL_CALL, "c", ev.LOG_NIM, "f:1", {})
    joined.add([client, nim, line], 0.0)
    emitted = [r for kind, r in joined.flush() if kind == "model_call"]
    home, owner = joined.joiners[0].home("c"), joined.joiners[0].home("trace-a")
    holding = {p: j.entries["model_call|c"] for p, j in joined.joiners.items() if "model_call|c" in j.entries}
    assert set(holding) == {home, owner, joined.joiners[0].home("trace-b")}
    assert all(len(e.evidence) == 3 for e in holding.values())
    assert [p for p, e in holding.items() if joined.joiners[p].owns(e)] == [owner]
    assert [r["signals"] for r in emitted] == [["log.nim", "span.client", "span.nim"]]
    only_logs = PartitionJoiner(config, joined.registry, 0, 8)
    only_logs.add([line], 0.0)
    assert only_logs.owns(only_logs.entries["model_call|c"]) is (home == 0)


def test_the_link_an_action_joins_is_the_earliest_call_at_its_highest_version():
    def link(call_id: str, version: int, started: str) -> Evidence:
        return Evidence(LINKS, "tc", "link", f"{call_id}:{version}", {
            "call_id": call_id, "version": version, "started_at": started, "deployment_id": None,
            "deployment_version": None})

    joiner = PartitionJoiner(config_mod.ProcessorConfig(), Partitioned(config_mod.ProcessorConfig(), 1).registry, 0, 1)
    joiner.add([link("b", 3, "2026-01-01T00:00:01Z"), link("a", 2, "2026-01-01T00:00:02Z"),
                link("b", 5, "2026-01-01T00:00:01Z")], 0.0)
    best = best_link(joiner.entries["links|tc"])
    assert (best.fields["call_id"], best.fields["version"]) == ("b", 5)


def test_a_call_waiting_for_its_homes_answer_stays_in_a_full_state_until_it_is_emitted():
    """The home's answer can take a while (its partition's member died); a full state must
    not let the call go meanwhile: its owner could then never emit it."""
    config = dataclasses.replace(config_mod.ProcessorConfig(), state_max_entries=1, join_window=1)
    joined = Partitioned(config, 2, held=())
    owner = joined.hold(0)
    trace = next(t for t in (f"trace-{i}" for i in range(100)) if owner.home(t) == 0)
    call = next(c for c in (f"chatcmpl-{i}" for i in range(100)) if owner.home(c) == 1)
    client = Evidence(ev.MODEL_CALL, call, ev.SPAN_CLIENT, "s1", {"trace_id": trace, "span_id": "s1"})
    others = [Evidence(ev.AGENT, f"a{i}", ev.SPAN_AGENT, f"a{i}", {"trace_id": f"{trace}-{i}", "span_id": f"a{i}"})
              for i in range(3)]
    joined.deliver(0, [client, *others], 0.0)
    assert joined.flush() == []  # not emitted before its home answers
    [sent_home] = joined.take_pending()[1]
    joiner_state = owner.state_changes()
    owner.sweep(100.0)
    owner.state_changes()
    assert f"model_call|{call}" in owner.entries, joiner_state
    joined.deliver(0, [Evidence("homed", call, "homed", "homed", {})], 100.0)
    assert [r["call_id"] for kind, r in joined.flush() if kind == "model_call"] == [call]
    assert sent_home == client
