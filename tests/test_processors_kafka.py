"""The processor on the real broker: the incident and a deployment upgrade through every
stage (OTel SDK exporter → collector → Kafka → processor → warehouse → CLI), and a
processor killed at random points that must end with exactly the trail of one that was not.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from nimtrail import columnar, kafka_io, records
from nimtrail.kafka_io import read_to_end
from tests import corpus, scenarios as sc
from tests.harness import Env, wait_for
from tests.trail import Trail

pytestmark = pytest.mark.integration
T0 = corpus.T0


def register_deployments(env: Env) -> None:
    t = env.config.topics
    kafka_io.ensure_topics(env.config, [t.otlp_spans, t.nimlogs, t.scrapes], compacted=[t.deployments])
    producer = kafka_io.producer(env.config)
    for record in corpus.deployments():
        key, value = sc.deployment_message(record)
        producer.send(t.deployments, key=key, value=value)
    producer.flush()
    producer.close()


def audit_trail(env: Env) -> Trail:
    """The audit topics reduced by the warehouse's rule (also checking that no key was ever
    emitted twice with one version and different content, and that every record is in the
    partition its key places it in: all its versions in one)."""
    trail = Trail()
    consumer = kafka_io.consumer(env.config, group_id=None)
    try:
        for topic in sorted(set(env.config.topics.audit().values())):
            count = len(kafka_io.partitions_of(consumer, topic))
            for message in read_to_end(consumer, topic):
                kind, batch = columnar.records_of(message.value)
                for record in batch:
                    key = records.key_of(kind, record)
                    assert message.partition == kafka_io.partition_of(key, count), (
                        f"{kind} {key} version {record['version']} in partition {message.partition} of {topic}")
                    trail.add(kind, record)
    finally:
        consumer.close()
    return trail


def beside(tmp_path: Path, bootstrap: str, warehouse: dict | None = None, **processor: str) -> tuple[Env, Env]:
    """An uninterrupted processor's world ("steady") and one beside it ("other") reading the
    same input topics and writing its own outputs and state, with `processor` settings (and
    `warehouse` settings)."""
    for name in ("steady", "other"):
        (tmp_path / name).mkdir()
    steady = Env(tmp_path / "steady", bootstrap, processor={"join_window": "2s"})
    shared = {k: getattr(steady.config.topics, k) for k in ("otlp_spans", "nimlogs", "scrapes", "deployments")}
    return steady, Env(tmp_path / "other", bootstrap, processor={"join_window": "2s", **processor}, topics=shared,
                       warehouse=warehouse or {})


def start_steady(steady: Env) -> None:
    """The deployments, a collector and the uninterrupted processor, ready."""
    register_deployments(steady)
    steady.start("collector")
    steady.start("processor")
    steady.wait_ready("collector")
    steady.wait_ready("processor")


def same_trail(steady: Env, other: Env, rounds: int | None, what: str, tick=lambda: None, logs=lambda: "",
               versions: bool = True, timeout: float = 300) -> Trail:
    """The steady trail once `rounds` of `_round_input` are in it, settled (None: once the
    caller saw it settled), and the other trail equals it record by record (without
    `versions`: every field but the version); `tick()` runs on every look (restarting what
    crashed), `logs()` says what the other side did if they never agree."""
    def compared(trail: Trail) -> dict:
        return trail.kept if versions else trail.content()

    def converged() -> Trail | None:
        tick()
        a, b = audit_trail(steady), audit_trail(other)
        settled = rounds is None or (len(a.of("finding")) >= rounds * (4 + 4 + 2 + 1)
                                     and len(a.of("model_call")) == rounds * (4 + 2))
        return a if settled and compared(a) == compared(b) else None

    try:
        return wait_for(converged, timeout=timeout, interval=1.0, what=what)
    except AssertionError as e:
        a, b = compared(audit_trail(steady)), compared(audit_trail(other))
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        detail = [(k, a.get(k), b.get(k)) for k in differ[:3]]
        raise AssertionError(f"{e}; {len(differ)} records differ, first: {detail}\n{logs()}") from None


def read_all(env: Env, topic: str) -> list:
    consumer = kafka_io.consumer(env.config, group_id=None)
    try:
        return list(read_to_end(consumer, topic))
    finally:
        consumer.close()


def test_incident_and_upgrade_come_out_right_through_every_stage(tmp_path: Path, kafka_bootstrap: str):
    # The processor's polls wait for a batch here (off by default; the warehouse's wait is on
    # in every test), so that path runs through every stage too.
    env = Env(tmp_path, kafka_bootstrap, processor={"join_window": "1s", "batch_wait": "200ms"})
    try:
        register_deployments(env)
        t = env.config.topics
        producer = kafka_io.producer(env.config)
        broken = sc.deployment("prod/broken", 1, T0)
        broken["version"] = "one"
        producer.send(t.deployments, key=b"prod/broken@1", value=records.encode_batch("deployment", [broken]))
        producer.send(t.nimlogs, key=b"x", value=b"not a log batch")
        producer.send(t.nimlogs, key=b"x", value=sc.nimlog_message([
            "INFO 03-03 10:00:00 ngc_injector.py:141] Selected profile: " + "c" * 64 + " (vllm-bf16-tp1-pp1)",
            "INFO 03-03 10:00:00 ngc_injector.py:142] Profile metadata: gpu: H100"], received=T0))
        producer.flush()
        producer.close()
        for stage in ("warehouse", "processor", "collector"):
            env.start(stage)
        for stage in ("warehouse", "processor", "collector"):
            env.wait_ready(stage)
        world = sc.World()
        incident = sc.agent_run(world, T0 + dt.timedelta(minutes=10), caller="alice")  # before the upgrade
        after = sc.agent_run(world, T0 + dt.timedelta(minutes=45), caller="bob", gate="human",
                             decision="approved", link_by_id=False)  # after it
        sc.World.send(env.otlp_http, world.take())

        def chain():
            out = env.cli("trace-back", "--tool-call-id", incident["tool_call_id"], "--json", check=False)
            doc = json.loads(out.stdout) if out.stdout.strip() else {}
            kinds = {f["kind"] for f in doc.get("findings") or ()}
            if doc.get("deployment") and {"ungated_action", "purpose_violation"} <= kinds:
                return doc
            return None

        doc = wait_for(chain, timeout=90, what="the incident's chain with its findings")
        action = doc["actions"][0]
        assert action["call_id"] == incident["call_id"] and action["tool_name"] == "delete_record"
        assert action["gate"] == "policy" and action["mcp_server"] == "crm-mcp"
        assert doc["caller"]["caller"] == "alice" and doc["caller"]["client_service"] == "ops-agent"
        assert (doc["deployment"]["deployment_id"], doc["deployment"]["version"]) == ("prod/llama-3-1-8b", 1)
        assert doc["deployment"]["destructive_tools"] == ["delete_record"]
        for kind in ("ungated_action", "purpose_violation"):
            found = [f for f in doc["findings"] if f["kind"] == kind and action["action_id"] in f["subject_ids"]]
            assert found and found[0]["detail"]["deployment_version"] == 1, kind

        def both_calls():
            rows = json.loads(env.cli("calls", "--json").stdout)["rows"]
            by_id = {r["call_id"]: r for r in rows}
            return by_id if {incident["call_id"], after["call_id"]} <= set(by_id) else None

        calls = wait_for(both_calls, timeout=60, what="both calls in the warehouse")
        assert calls[incident["call_id"]]["deployment_version"] == 1
        assert calls[after["call_id"]]["deployment_version"] == 2
        assert calls[after["call_id"]]["caller"] == "bob"  # only invoke_agent named him
        assert [a["tool_name"] for a in calls[after["call_id"]]["actions"]] == ["delete_record"]  # by parentage

        # Startup lines became a deployment observation; bad input went to the dead-letter
        # topic with its reason, untouched, and the processor went on.
        observations = [json.loads(m.value) for m in read_all(env, t.observations)]
        assert [(o["deployment"], o["facts"]["profile_id"], o["facts"]["profile_tags"]) for o in observations] == [
            ("prod/llama-3-1-8b", "c" * 64, {"gpu": "H100"})]
        dead = {dict(m.headers)["nimtrail.reason"].decode(): m.value for m in read_all(env, t.dlq)}
        assert dead["malformed_nimlogs"] == b"not a log batch" and "invalid_deployment" in dead
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{env.ports['ops']}/metrics", timeout=5).read().decode()
        assert 'nimtrail_processor_rejected_messages_total{reason="malformed_nimlogs"' in metrics
    finally:
        env.stop_all()


def _round_input(world: sc.World, round_no: int) -> tuple[list, list[bytes]]:
    """One burst of input: agent traces and log batches. Each trace is exported in two
    requests — the model call, then the agent and its tool run (which name the caller) —
    so that a crash can fall between the halves of a join."""
    traces = []
    for i in range(4):
        sc.agent_run(world, T0 + dt.timedelta(minutes=10 * round_no, seconds=i), caller=f"user{i}",
                     gate="policy" if i % 2 else "human")
        spans = world.take()
        call = [s for s in spans if s.name == "llm_request" or s.name.startswith("chat ")]
        traces += [call, [s for s in spans if s not in call]]
    log_call, unknown_call = f"chatcmpl-log{round_no:04d}", f"chatcmpl-unk{round_no:04d}"
    logs = [sc.nimlog_message([
        f"INFO 2026-03-03 12:{round_no:02d}:00.000 logger.py:1] Received request {log_call}: params: x",
        f"INFO 2026-03-03 12:{round_no:02d}:01.000 logger.py:2] Finished request {log_call}.",
        f"INFO 03-03 12:{round_no:02d}:05 metrics.py:351] Avg prompt throughput: 1.0 tokens/s, Avg generation "
        f"throughput: {round_no}.5 tokens/s, Running: 1 reqs, GPU KV cache usage: 1.0%",
    ], received=T0 + dt.timedelta(minutes=round_no), first_offset=round_no * 10_000),
        sc.nimlog_message([
            f"INFO 2026-03-03 12:{round_no:02d}:02.000 logger.py:1] Received request {unknown_call}: params: x",
        ], source="staging/pod", deployment="staging/unregistered", received=T0, first_offset=round_no)]
    return traces, logs


def test_a_processor_killed_at_random_points_ends_with_the_uninterrupted_trail(tmp_path: Path,
                                                                                kafka_bootstrap: str):
    seed = int(os.environ.get("NIMTRAIL_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    steady, crashy = beside(tmp_path, kafka_bootstrap)
    points = ["processor.after_produce", "processor.after_state", "processor.after_commit"]
    kills: list[str] = []  # the fault armed at each start, and SIGKILLs
    crashes = [0]
    try:
        start_steady(steady)
        producer = kafka_io.producer(steady.config)
        world = sc.World()

        def restart_crashy() -> subprocess.Popen:
            fault = f"{rng.choice(points)}:{rng.randint(1, 4)}"
            kills.append(fault)
            return crashy.start("processor", faults=fault)

        victim = restart_crashy()
        rounds = 6
        for round_no in range(rounds):
            traces, logs = _round_input(world, round_no)
            for spans in traces:
                sc.World.send(steady.otlp_http, spans)
            for value in logs:
                producer.send(steady.config.topics.nimlogs, key=b"src", value=value)
            producer.flush()
            if victim.poll() is not None:  # it hit its fault point: restart it with another
                assert victim.returncode == 137, crashy.log("processor")[-2000:]
                crashes[0] += 1
                victim = restart_crashy()
            elif rng.random() < 0.5 or (crashes[0] < 2 and round_no >= rounds - 2):
                # (the last rounds make sure at least two crashes happen whatever was armed)
                try:
                    wait_for(lambda: victim.poll() is not None, timeout=rng.uniform(0.2, 2.5), interval=0.05)
                except AssertionError:
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    kills.append("SIGKILL")
                crashes[0] += 1
                victim = restart_crashy()
        producer.close()
        running = [victim]

        def restart_without_a_fault() -> None:
            if running[0].poll() is not None:  # its last fault fired: finish without one
                assert running[0].returncode == 137, crashy.log("processor")[-2000:]
                crashes[0] += 1
                running[0] = crashy.start("processor")

        final = same_trail(steady, crashy, rounds, f"the killed processor's trail to equal the steady one "
                                                   f"(seed {seed}, kills {kills})", restart_without_a_fault,
                           lambda: f"the killed processor's log ends:\n{crashy.log('processor')[-4000:]}")
        assert len(final.of("tool_action")) == rounds * 4
        assert all(a["call_id"] for a in final.of("tool_action").values())
        assert all(c["caller"] for c in final.of("model_call").values() if c["client_service"])
        kinds = sorted(f["kind"] for f in final.of("finding").values())
        assert len(kinds) == rounds * 11
        assert kinds.count("ungated_action") == rounds * 2  # the policy-approved half
        assert kinds.count("unknown_deployment") == rounds
        assert crashes[0] >= 2, kills
        print(f"seed {seed}: {crashes[0]} crashes, armed {kills}")
    finally:
        crashy.stop_all()
        steady.stop_all()


def test_a_processor_restores_a_changelog_of_one_entry_per_key_and_retires_it(tmp_path: Path,
                                                                               kafka_bootstrap: str):
    """The changelog's older layout (key = entry id, one entry per message, spread by CRC-32)
    is restored; the keys whose entries move into chunks are tombstoned, and a restart
    restores the same state from the mix."""
    import zlib

    from processors.loop import Processor
    from processors.pipeline import Pipeline
    from processors.state import StateStore

    env = Env(tmp_path, kafka_bootstrap, processor={"join_window": "1h"})
    t = env.config.topics
    register_deployments(env)
    kafka_io.ensure_topics(env.config, [], compacted=[t.processor_state])
    world = sc.World()
    ids = sc.agent_run(world, T0, mcp=False)
    spans = world.take()
    call_part = [s for s in spans if s.name == "llm_request" or s.name.startswith("chat ")]
    action_part = [s for s in spans if s not in call_part]
    before = Pipeline(env.config.processor)
    before.handle("spans", sc.World.otlp(call_part), 0)
    before.take()
    producer = kafka_io.producer(env.config)
    partitions = len(producer.partitions_for(t.processor_state))
    old = before.joiner.state_changes()
    assert old
    for entry_id, value in old:
        key = entry_id.encode()
        producer.send(t.processor_state, key=key, value=value, partition=zlib.crc32(key) % partitions)
    producer.send(t.otlp_spans, key=b"t", value=sc.World.otlp(action_part))
    producer.flush()
    producer.close()

    processor = Processor(env.config)
    restored: list[set[str]] = []
    restore = processor._restore  # noqa: SLF001 - what the state was right after it was read back

    def restore_and_look() -> None:
        restore()
        restored.append(set(processor.pipeline.joiner.entries))

    processor._restore = restore_and_look  # noqa: SLF001
    try:
        found = []

        def action_joined():
            processor.run_once(timeout_ms=200)
            consumer = kafka_io.consumer(env.config, group_id=None)
            try:
                for message in read_to_end(consumer, t.audit()["tool_action"]):
                    found.extend(columnar.records_of(message.value)[1])
            finally:
                consumer.close()
            return [a for a in found if a["call_id"] == ids["call_id"]]

        wait_for(action_joined, timeout=60, what="the action joined to the call held in the old changelog")
        assert restored == [{k for k, _ in old}]
        for _ in range(3):  # the tombstones of what moved go out with the next writes
            processor.run_once(timeout_ms=100)
        state = dict(processor.pipeline.joiner.entries)
    finally:
        processor.close()
    latest = {m.key.decode(): m.value for m in read_all(env, t.processor_state)}
    call = f"model_call|{ids['call_id']}"
    assert latest[call] is None  # its entry changed: it lives in a chunk now
    assert any(k.startswith("chunk|") and v is not None for k, v in latest.items())
    entries = dict(StateStore(env.config).restore()[0])
    assert set(entries) == set(state)
    assert len(entries[call]["ev"]) == len(state[call].evidence)


def test_end_offsets_are_asked_of_a_client_that_never_fetches(tmp_path: Path, kafka_bootstrap: str):
    """Kafka answers a connection's requests in order: asked of a consumer whose fetch is
    waiting at the broker (the idle deployments topic: up to fetch.max.wait.ms, 500 ms),
    end offsets wait behind it, and the horizon asks once a second on the processor's loop."""
    from processors.loop import Processor

    env = Env(tmp_path, kafka_bootstrap)
    register_deployments(env)
    processor = Processor(env.config)
    try:
        def fetching_consumer_asked(*_args, **_kwargs):
            raise AssertionError("end offsets asked of a consumer that fetches")

        wait_for(lambda: processor.run_once(timeout_ms=100) is not None and processor.active, timeout=60,
                 what="the group to hand the processor the input")
        processor.consumer.end_offsets = fetching_consumer_asked
        processor.deployments.end_offsets = fetching_consumer_asked
        horizon, reached = processor._horizon, []  # noqa: SLF001
        processor._horizon = lambda now: reached.append(horizon(now)) or reached[-1]  # noqa: SLF001
        wait_for(lambda: processor.run_once(timeout_ms=100) is not None and any(r is not None for r in reached),
                 timeout=60, what="the horizon to move (the input known to be read)")
        assert not processor.offsets.assignment() and not processor.offsets.subscription()
    finally:
        processor.close()
