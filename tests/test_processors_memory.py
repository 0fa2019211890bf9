"""The join state held to its caps, on the pure pipeline: settled records leave, and what
arrives for them later comes out as if they were still held."""

from __future__ import annotations

import dataclasses
import datetime as dt

from nimtrail.config import ProcessorConfig
from processors.pipeline import Pipeline
from tests import corpus, scenarios as sc, trail
from tests.test_processors_join import spans_of

T0 = corpus.T0
ROOMY = ProcessorConfig(join_window=60, state_ttl=100_000)
SMALL = dataclasses.replace(ROOMY, state_max_entries=12)


def runs(count: int) -> tuple[list[dict[str, str]], list[list[tuple[str, bytes]]]]:
    """`count` agent runs, each's spans apart (ids, messages per run)."""
    ids, messages = [], []
    for i in range(count):
        world = sc.World()
        ids.append(sc.agent_run(world, T0 + dt.timedelta(seconds=i), mcp=False))
        messages.append(spans_of(world))
    return ids, messages


def feed(pipeline: Pipeline, messages: list[tuple[str, bytes]], now: float, out: trail.Trail) -> int:
    """One batch as the service runs it: handle, settle what is due, produce, write state.
    Returns how many records it produced."""
    for kind, value in messages:
        pipeline.handle(kind, value, now)
    pipeline.sweep(now)
    produced = pipeline.take()
    out.add_outputs(produced)
    pipeline.state_changes()
    return sum(len(batch) for batch in produced.records.values())


def test_settled_records_leave_a_full_state_and_late_input_comes_out_as_if_held():
    ids, messages = runs(20)
    late_action = [m for m in messages[0] if b"execute_tool" in m[1]]
    calls = [[m for m in run if b"execute_tool" not in m[1]] for run in messages]
    got = {}
    for name, config in (("roomy", ROOMY), ("small", SMALL)):
        pipeline, out = Pipeline(config), trail.Trail()
        for i, call in enumerate(calls):
            feed(pipeline, call, 100.0 * i, out)  # each run settles before the next arrives
        feed(pipeline, [], 4000, out)  # the last run settles too
        redelivered = feed(pipeline, calls[0], 5000, out)  # the first run's spans again
        feed(pipeline, late_action, 5000, out)
        feed(pipeline, [], 6000, out)  # the late action settles
        got[name] = (out, pipeline, redelivered)
    (roomy, _, _), (small, pipeline, redelivered) = got["roomy"], got["small"]
    assert len(pipeline.joiner) <= SMALL.state_max_entries < len(got["roomy"][1].joiner)
    metrics = pipeline.metrics.exposition().decode()
    assert 'nimtrail_processor_evicted_entries_total{reason="max_entries"}' in metrics
    assert "nimtrail_processor_ignored_late_evidence_total" in metrics
    # The re-delivered spans of a record that left the state start no record afresh.
    assert redelivered == 0
    assert small.of("model_call") == roomy.of("model_call")
    # The first run's call left the state long before its action came; the action is
    # joined to it all the same, and no unattributed_action is raised.
    action = small.of("tool_action")[ids[0]["action_id"]]
    assert action["call_id"] == ids[0]["call_id"] == roomy.of("tool_action")[ids[0]["action_id"]]["call_id"]
    assert not [f for f in small.of("finding").values() if f["kind"] == "unattributed_action"]


def test_a_state_full_of_unsettled_records_settles_the_oldest_early():
    _, messages = runs(20)
    pipeline, out = Pipeline(SMALL), trail.Trail()
    for run in messages:
        feed(pipeline, run, 0.0, out)  # all inside their join window
    feed(pipeline, [], 0.0, out)  # judged now; they can leave with the next write
    assert len(pipeline.joiner) <= SMALL.state_max_entries
    metrics = pipeline.metrics.exposition().decode()
    assert "nimtrail_processor_settled_early_records_total" in metrics
