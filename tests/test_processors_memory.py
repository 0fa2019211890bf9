"""The join state held to its caps, on the pure pipeline: settled records leave, and what
arrives for them later comes out as if they were still held."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import signal
import time
from pathlib import Path

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from nimtrail import columnar, kafka_io, records
from nimtrail.config import ProcessorConfig
from processors.pipeline import Pipeline
from processors.state import COMPACTION
from tests import corpus, scenarios as sc, trail
from tests.harness import Env, scrape, wait_for
from tests.test_processors_join import spans_of
from tests.test_processors_kafka import read_all

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
    Returns how many joined records it produced (span records are the spans as audited,
    emitted as they arrive: a re-delivered span comes out again as the same version, which
    the warehouse keeps once)."""
    for kind, value in messages:
        pipeline.handle(kind, value, now)
    pipeline.sweep(now)
    produced = pipeline.take()
    out.add_outputs(produced)
    pipeline.state_changes()
    return sum(len(batch) for kind, batch in produced.records.items() if kind != "span")


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


def test_entries_written_again_for_the_changelog_come_out_unchanged_and_nothing_else_does():
    """`state_changes(rewrite)` (chunks.Chunks.sparse_values): a held entry comes out again
    with its value as it is; an id the joiner does not hold (a forgotten piece, an entry
    that left) is not turned into a tombstone."""
    _, messages = runs(2)
    pipeline, out = Pipeline(ROOMY), trail.Trail()
    for run in messages:
        feed(pipeline, run, 0.0, out)
    held = sorted(pipeline.joiner.entries)[:3]
    before = {entry_id: pipeline.joiner.entries[entry_id].encode() for entry_id in held}
    rewritten = dict(pipeline.state_changes([*held, "forgotten|000000000000", "model_call|gone"]))
    assert rewritten == before


def test_a_state_full_of_unsettled_records_settles_the_oldest_early():
    _, messages = runs(20)
    pipeline, out = Pipeline(SMALL), trail.Trail()
    for run in messages:
        feed(pipeline, run, 0.0, out)  # all inside their join window
    feed(pipeline, [], 0.0, out)  # judged now; they can leave with the next write
    assert len(pipeline.joiner) <= SMALL.state_max_entries
    metrics = pipeline.metrics.exposition().decode()
    assert "nimtrail_processor_settled_early_records_total" in metrics


def test_a_state_fed_more_than_its_cap_a_batch_is_back_at_its_cap_after_every_write():
    """What a full state settles early is judged in the same batch and leaves at that
    batch's state write, not a batch later (the state ran to three times its cap here)."""
    _, messages = runs(60)
    for per_batch in (1, 3, 6):  # 3 to 18 entries a batch, against a cap of 12
        pipeline, out = Pipeline(SMALL), trail.Trail()
        sizes = []
        for i in range(0, len(messages), per_batch):
            feed(pipeline, [m for run in messages[i:i + per_batch] for m in run], 0.0, out)
            sizes.append(len(pipeline.joiner))
        one_trace = 3  # agent, call and action of one run: evicted together or not at all
        assert max(sizes[2:]) <= SMALL.state_max_entries + one_trace, (per_batch, sizes)


def test_the_ttl_counts_from_the_time_the_input_states_so_a_replay_of_old_input_leaves_soon():
    config = dataclasses.replace(ROOMY, state_ttl=3600)
    ids, messages = runs(1)
    then = dt.datetime(2026, 3, 3, 12, 0, 1, tzinfo=dt.timezone.utc).timestamp()  # after the run
    kept = {}
    for name, now in (("live", then), ("replayed a day later", then + 86400)):
        pipeline, out = Pipeline(config), trail.Trail()
        feed(pipeline, messages[0], now, out)
        feed(pipeline, [], now + 61, out)  # settled: its join window passed
        feed(pipeline, [], now + 122, out)  # a join window after its last touch
        kept[name] = len(pipeline.joiner)
        assert ids[0]["call_id"] in out.of("model_call")
    # Live input stays its whole TTL; input stating a time a day old leaves once settled
    # and a join window after it was last touched, not an hour later.
    assert kept == {"live": 3, "replayed a day later": 0}


def test_evicted_entries_leave_the_deadline_and_expiry_schedules_too():
    _, messages = runs(20)
    pipeline, out = Pipeline(SMALL), trail.Trail()
    pipeline.joiner.schedule_slack = 0
    for i, run in enumerate(messages):
        feed(pipeline, run, 100.0 * i, out)  # each run settles, and the cap evicts the oldest
    joiner = pipeline.joiner
    # Without pruning each heap would hold an item of every entry ever seen (an hour's worth).
    assert len(joiner._expiry) <= 2 * len(joiner) and len(joiner._deadlines) <= 2 * len(joiner)


# -- through the running processor ------------------------------------------------------

CAP = 60
PER_MESSAGE = 20  # calls per input message; one message per batch


def _gauges(env: Env) -> dict[str, float]:
    return scrape(f"http://127.0.0.1:{env.ports['ops']}/metrics")


@pytest.mark.integration
def test_the_running_processor_holds_its_state_to_the_cap_and_restores_only_live_entries(
        tmp_path: Path, kafka_bootstrap: str):
    env = Env(tmp_path, kafka_bootstrap, processor={"join_window": "1s", "state_ttl": "1h",
                                                    "state_max_entries": CAP, "max_poll_records": 1})
    t = env.config.topics
    kafka_io.ensure_topics(env.config, [t.nimlogs])
    calls = [f"chatcmpl-mem{i:05d}" for i in range(CAP * 10)]
    producer = kafka_io.producer(env.config)
    # Times of now: older input would leave by its TTL (state_ttl counts from the time the
    # input states), and this is about the cap.
    now = dt.datetime.now(dt.timezone.utc)
    for start in range(0, len(calls), PER_MESSAGE):
        lines = []
        for call in calls[start:start + PER_MESSAGE]:
            lines += [f"INFO {now:%Y-%m-%d %H:%M:%S}.000 logger.py:1] Received request {call}: params: x",
                      f"INFO {now:%Y-%m-%d %H:%M:%S}.500 logger.py:2] Finished request {call}."]
        producer.send(t.nimlogs, key=b"llama", value=sc.nimlog_message(lines, received=now, first_offset=start * 1000))
    producer.flush()
    producer.close()
    try:
        started = time.monotonic()
        process = env.start("processor")
        env.wait_ready("processor")
        seen: list[float] = []

        def all_settled_and_evicted():
            g = _gauges(env)
            seen.append(g.get("nimtrail_processor_state_entries", 0))
            evicted = sum(v for k, v in g.items() if k.startswith("nimtrail_processor_evicted_entries_total"))
            return evicted >= len(calls) - CAP and g["nimtrail_processor_state_entries"] <= CAP and g

        gauges = wait_for(all_settled_and_evicted, timeout=120, interval=0.2,
                          what="every call settled and all but the cap evicted")
        # Bounded all along: at most one input message of unsettled calls above the cap
        # (settled early, they leave with the next write).
        assert max(seen) <= CAP + PER_MESSAGE, seen
        assert 0 < gauges["nimtrail_processor_state_bytes"]
        emitted = set()
        for message in read_all(env, t.audit()["model_call"]):
            emitted.update(r["call_id"] for r in columnar.records_of(message.value)[1])
        assert emitted == set(calls)  # evicting lost no record
        # Settled early in nearly every batch, counted every time, logged once a minute.
        warned = env.log("processor").count("The join state is at its cap")
        assert 1 <= warned <= 1 + (time.monotonic() - started) // 60
        assert _sum(gauges, "nimtrail_processor_settled_early_records_total") > 10 * warned
        live = int(gauges["nimtrail_processor_state_entries"])
        # The changelog's bookkeeping left the evicted calls behind too: of 600 deletion
        # markers, only those still shadowing a value in an older chunk are kept.
        changelog = _gauges(env)
        assert changelog["nimtrail_processor_state_changelog_markers"] <= 2 * PER_MESSAGE
        assert changelog["nimtrail_processor_state_changelog_chunks"] <= live

        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        env.start("processor")
        env.wait_ready("processor")
        restored = _restored(env, starts=2)
        assert restored[-1] == live <= CAP  # only the live entries came back
        assert _gauges(env)["nimtrail_processor_state_entries"] == live
        # The changelog's segments close and get compacted soon, not after 1 GiB or 7 days.
        admin = kafka_io.admin_client(env.config)
        try:
            described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t.processor_state)])
        finally:
            admin.close()
        settings = described["topic"][t.processor_state]
        assert {k: settings[k]["value"] for k in COMPACTION} == COMPACTION
    finally:
        env.stop_all()


def _restored(env: Env, starts: int) -> list[int]:
    """The entries each start restored, once `starts` did: a processor restores when the
    group hands it the input, after it is healthy."""
    return wait_for(lambda: (lambda r: r if len(r) >= starts else None)(
        [int(n) for n in re.findall(r"Restored (\d+) join state entries", env.log("processor"))]),
        timeout=60, what=f"start {starts} of the processor to restore its state")


def _sum(gauges: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in gauges.items() if k == prefix or k.startswith(prefix + "{"))


def _audit(env: Env, kind: str) -> list[dict]:
    return [r for m in read_all(env, env.config.topics.audit()[kind]) for r in columnar.records_of(m.value)[1]]


@pytest.mark.integration
def test_what_left_the_state_is_still_known_after_a_restart(tmp_path: Path, kafka_bootstrap: str):
    """A late tool action for a call that left the state before a SIGKILL still joins it,
    and re-delivered spans of that call still start no record afresh."""
    env = Env(tmp_path, kafka_bootstrap, processor={"join_window": "1s", "state_ttl": "1h",
                                                    "state_max_entries": 12})
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    world = sc.World()
    first = sc.agent_run(world, now, mcp=False)
    spans = world.take()
    call_part = [s for s in spans if not s.name.startswith("execute_tool")]
    action_part = [s for s in spans if s.name.startswith("execute_tool")]
    for i in range(20):  # enough settled runs after it to push it past the cap
        sc.agent_run(world, now + dt.timedelta(milliseconds=i + 1), mcp=False)
    others = world.take()
    try:
        processor = env.start("processor")
        env.start("collector")
        env.wait_ready("processor")
        env.wait_ready("collector")
        sc.World.send(env.otlp_http, call_part)
        wait_for(lambda: any(r["call_id"] == first["call_id"] for r in _audit(env, "model_call")),
                 timeout=60, what="the first call's record")
        sc.World.send(env.otlp_http, others)
        total = 2 + 3 * 20  # entries: the first run's agent and call, then agent, call, action each

        def evicted_but_the_cap():
            g = _gauges(env)
            return _sum(g, "nimtrail_processor_evicted_entries_total") >= total - 12 and g

        wait_for(evicted_but_the_cap, timeout=90, interval=0.2, what="all but the cap evicted")
        call_records = [r for r in _audit(env, "model_call") if r["call_id"] == first["call_id"]]

        os.kill(processor.pid, signal.SIGKILL)
        processor.wait()
        env.start("processor")
        env.wait_ready("processor")
        restored = _restored(env, starts=2)
        assert restored[-1] <= 12  # the first call is not among them
        assert _gauges(env)["nimtrail_processor_forgotten_evidence"] > 0

        sc.World.send(env.otlp_http, action_part)
        action = wait_for(lambda: next((r for r in _audit(env, "tool_action")
                                        if r["action_id"] == first["action_id"] and r["call_id"]), None),
                          timeout=60, what="the late action, joined")
        assert action["call_id"] == first["call_id"]
        sc.World.send(env.otlp_http, call_part)  # re-delivered
        wait_for(lambda: _sum(_gauges(env), "nimtrail_processor_ignored_late_evidence_total") >= len(call_part),
                 timeout=60, what="the re-delivered spans ignored")
        assert [r for r in _audit(env, "model_call") if r["call_id"] == first["call_id"]] == call_records
        assert not [f for f in _audit(env, "finding") if f["kind"] == "unattributed_action"
                    and first["action_id"] in f["subject_ids"]]
    finally:
        env.stop_all()

