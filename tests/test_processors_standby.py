"""Processors as a group on the real broker: one reads the input, the others stand by, and
SIGKILL of the one reading hands the input to a standby that ends with exactly the trail
of a processor that was never interrupted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import datetime as dt
from pathlib import Path

import duckdb
import json
import pytest

from nimtrail import api_client, kafka_io, records
from tests import corpus, scenarios as sc
from tests.corpus import T0
from tests.harness import Env, free_port, scrape, wait_for
from tests.trail import Trail
from warehouse.tables import RECORD_TABLES
from tests.test_processors_kafka import (_round_input, audit_trail, beside, read_all, register_deployments,
                                         same_trail, start_steady)

pytestmark = pytest.mark.integration
ACTIVE = "nimtrail_processor_active_members"


class Member:
    """One `nimtrail processor --instance-id ID --ops HOST:PORT`, as a user starts a second one."""

    def __init__(self, env: Env, name: str, faults: str = ""):
        self.env, self.name, self.port = env, name, free_port()
        self.process = self.start(faults)

    def start(self, faults: str = "") -> subprocess.Popen:
        """(Again, after a crash: the same instance id and port.)"""
        self.process = self.env.start("processor", faults=faults, log_name=self.name,
                                      args=("--instance-id", self.name, "--ops", f"127.0.0.1:{self.port}"))
        return self.process

    def active(self) -> float | None:
        return scrape(f"http://127.0.0.1:{self.port}/metrics").get(ACTIVE)


def _one_active(members: list[Member]) -> Member | None:
    """The member reading the input, when one of those running does and the others stand by."""
    running = [m for m in members if m.process.poll() is None]
    states = [m.active() for m in running]
    if sorted(states) != [0] * (len(running) - 1) + [1]:
        return None
    return running[states.index(1)]


def _logs(env: Env, members: list[Member]) -> str:
    return "\n".join(f"--- {m.name}\n{env.log(m.name)[-2500:]}" for m in members)


def _send_round(env: Env, world: sc.World, round_no: int) -> None:
    traces, logs = _round_input(world, round_no)
    for spans in traces:
        sc.World.send(env.otlp_http, spans)
    producer = kafka_io.producer(env.config)
    for value in logs:
        producer.send(env.config.topics.nimlogs, key=b"src", value=value)
    producer.flush()
    producer.close()


def test_a_standby_takes_over_from_a_killed_processor_and_the_trail_stays_exact(tmp_path: Path,
                                                                                  kafka_bootstrap: str):
    # The group's members read the same input and write their own outputs and state; a
    # silent member is given up after 6 s (the broker's least) instead of 45.
    steady, group = beside(tmp_path, kafka_bootstrap, session_timeout="6s")
    members: list[Member] = []
    try:
        start_steady(steady)
        members += [Member(group, "a"), Member(group, "b")]
        world = sc.World()
        _send_round(steady, world, 0)

        def one_active() -> Member | None:
            return _one_active(members)

        first = wait_for(one_active, timeout=90, what="one member reading the input and one standing by")
        _send_round(steady, world, 1)
        wait_for(lambda: len(audit_trail(group).of("model_call")) >= 6, timeout=90,
                 what="the first active member to write the first round")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        _send_round(steady, world, 2)  # while nobody reads: the group has not given up on it yet
        members.append(Member(group, "c"))  # a fresh member, as an orchestrator would start
        _send_round(steady, world, 3)
        second = wait_for(one_active, timeout=90, what="a standing-by member to take the input over")
        assert second is not first
        rounds = 4
        final = same_trail(steady, group, rounds, "the group's trail to equal the uninterrupted processor's",
                           logs=lambda: _logs(group, members))
        assert len(final.of("tool_action")) == rounds * 4
        assert all(a["call_id"] for a in final.of("tool_action").values())
        taken_over = group.log(second.name)
        assert "state restored from the changelog: yes" in taken_over
        assert "Standing by" in taken_over or second.name == "c"
        standing = [m for m in members if m.process.poll() is None and m is not second]
        assert [m.active() for m in standing] == [0]
    finally:
        group.stop_all()  # every member (Env.start keeps them)
        steady.stop_all()



def test_a_group_whose_members_crash_between_write_and_commit_ends_with_the_uninterrupted_trail(
        tmp_path: Path, kafka_bootstrap: str):
    """Both members of a group armed to crash at random points of the delivery order (after
    the outputs, after the state, after the commit) or SIGKILLed while they read: each crash
    hands the input to the other member or back to the restarted one, restoring the state
    from the changelog, and the trail ends equal to an uninterrupted processor's."""
    seed = int(os.environ.get("NIMTRAIL_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    points = ["processor.after_produce", "processor.after_state", "processor.after_commit"]
    steady, group = beside(tmp_path, kafka_bootstrap, session_timeout="6s")
    armed: list[str] = []

    def fault() -> str:
        armed.append(f"{rng.choice(points)}:{rng.randint(1, 3)}")
        return armed[-1]

    members: list[Member] = []
    crashes = [0]
    try:
        start_steady(steady)
        members += [Member(group, "a", fault()), Member(group, "b", fault())]
        world = sc.World()

        def restart_the_crashed(faulty: bool = True) -> None:
            for m in members:
                if m.process.poll() is not None:
                    assert m.process.returncode in (137, -9), group.log(m.name)[-2000:]
                    crashes[0] += 1
                    m.start(fault() if faulty else "")

        rounds = 6
        for round_no in range(rounds):
            _send_round(steady, world, round_no)
            restart_the_crashed()
            if rng.random() < 0.4:  # SIGKILL the one reading, once one does
                def reading() -> Member | None:
                    restart_the_crashed()
                    return next((m for m in members if m.process.poll() is None and m.active() == 1), None)

                victim = wait_for(reading, timeout=60, interval=0.2, what="a member reading the input")
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait()
                armed.append(f"SIGKILL {victim.name}")
            time.sleep(rng.uniform(0.5, 3.0))  # some of it read before the next round
        final = same_trail(steady, group, rounds, f"the group's trail to equal the uninterrupted one "
                                                  f"(seed {seed}, {armed})",
                           lambda: restart_the_crashed(faulty=False),  # the faults still armed fire; then none
                           lambda: _logs(group, members))
        assert len(final.of("tool_action")) == rounds * 4
        # Every restore, counted where it happens: a member armed to crash after its first
        # produce can crash in the restore's own delivery, before it says it reads the input.
        restored = sum(group.log(m.name).count(" join state entries from ") for m in members)
        print(f"seed {seed}: {crashes[0]} crashes, {restored} restores; {armed}")
        assert crashes[0] >= 1 and restored >= 2, (seed, armed)
    finally:
        group.stop_all()  # every member (Env.start keeps them)
        steady.stop_all()


def _hard_round(env: Env, world: sc.World, round_no: int) -> None:
    """One burst of the joins that cross what the raw topics co-locate: NIM log lines for
    the calls of the traces (joined by request id, no trace id), a tool run whose trace
    context broke (joined only by its tool-call id, from another trace) and one linked by
    parentage alone. Each trace goes in two requests, the call first."""
    when = T0 + dt.timedelta(minutes=20 * round_no)
    lines = []
    for i, shape in enumerate(({}, {"tool_in_own_trace": True}, {"link_by_id": False, "gate": "human"})):
        ids = sc.agent_run(world, when + dt.timedelta(seconds=i), caller=f"user{i}", **shape)
        spans = world.take()
        call = [s for s in spans if s.name == "llm_request" or s.name.startswith("chat ")]
        sc.World.send(env.otlp_http, call)
        sc.World.send(env.otlp_http, [s for s in spans if s not in call])
        lines += [f"INFO {when:%Y-%m-%d %H:%M}:0{i}.000 logger.py:1] Received request {ids['call_id']}: params: x",
                  f"INFO {when:%Y-%m-%d %H:%M}:0{i}.400 logger.py:2] Finished request {ids['call_id']}."]
    producer = kafka_io.producer(env.config)
    producer.send(env.config.topics.nimlogs, key=b"src", value=sc.nimlog_message(
        lines, received=when, first_offset=round_no * 10_000)).get(30)
    producer.close()


def test_three_members_one_killed_and_a_fourth_started_keep_one_processors_trail_across_hard_joins(
        tmp_path: Path, kafka_bootstrap: str):
    """Three members; a world of NIM log lines for the traced calls, tool runs whose trace
    context broke and a deployment upgraded mid-stream; the member reading is SIGKILLed
    mid-run and a fourth joins. The group ends with exactly an uninterrupted processor's
    trail, record by record: every call and action once, with the same fields. Two
    warehouse shards store the group's trail: together, exactly it; each, its partitions."""
    steady, group = beside(tmp_path, kafka_bootstrap, session_timeout="6s", warehouse={"shards": 2})
    members: list[Member] = []
    try:
        members += three_members_over_two_shards(steady, group)
        world = sc.World()
        _hard_round(steady, world, 0)
        first = wait_for(lambda: _one_active(members), timeout=90, what="one member reading, two standing by")
        _hard_round(steady, world, 1)
        wait_for(lambda: len(audit_trail(group).of("model_call")) >= 6, timeout=90,
                 what="the first member reading to write two rounds")
        members.append(kill_and_finish_the_hard_rounds(steady, group, world, first))
        second = wait_for(lambda: _one_active(members), timeout=90, what="a standby to take the input over")
        assert second is not first
        # Every field but the version: a call that matched version 1 all along is rebuilt when
        # version 3 registers only where it is still held then. The uninterrupted processor
        # may have let it leave the state already, while the member that took over restored it
        # from the changelog: the same record, raised by one version in one trail.
        final = same_trail(steady, group, None, "the group's trail to equal the uninterrupted processor's",
                           logs=lambda: _logs(group, members), versions=False)
        raised = sum(final.kept[k]["version"] != v["version"] for k, v in audit_trail(group).kept.items())
        print(f"{raised} records of the group's trail carry another version than the uninterrupted one's")
        emitted = front_shows_the_hard_rounds(final, group)
    finally:
        group.stop_all()
        steady.stop_all()
    shards_hold_exactly(group, emitted)


def front_shows_the_hard_rounds(final: Trail, group: Env) -> Trail:
    """The four hard rounds' calls carry NIM's log lines and both spans, half of them on the
    upgrade; the query front (over the shards) shows the group's trail, which is returned."""
    calls = final.of("model_call").values()
    assert all(set(c["signals"]) >= {"log.nim", "span.client", "span.nim"} for c in calls)
    assert sorted(c["deployment_version"] for c in calls) == [1] * 6 + [3] * 6
    emitted = audit_trail(group)
    wait_for(lambda: _front_holds(group, emitted), timeout=60,
             what="the warehouse shards to hold the group's calls and actions, each at its last version")
    return emitted


def shards_hold_exactly(group: Env, emitted: Trail) -> None:
    """The two shards' files together hold exactly the emitted trail, and verify passes
    over both (offline: every shard's file)."""
    assert _stored(group) == {key: record["version"] for key, record in emitted.kept.items()}
    doc = json.loads(group.cli("verify", "--json").stdout)
    assert doc["ok"], doc["problems"]


def three_members_over_two_shards(steady: Env, group: Env) -> list[Member]:
    """The uninterrupted processor beside, two warehouse shards, and three members a, b, c."""
    start_steady(steady)
    for i in (0, 1):
        group.start("warehouse", args=("--shard", str(i)), log_name=f"warehouse-{i}")
    return [Member(group, name) for name in ("a", "b", "c")]


def kill_and_finish_the_hard_rounds(steady: Env, group: Env, world: sc.World, killed: Member) -> Member:
    """SIGKILL `killed`, send round 2, upgrade the deployment, start a fourth member "d",
    send round 3, and wait for the uninterrupted processor to join all four rounds. The
    fourth member."""
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait()
    _hard_round(steady, world, 2)
    upgrade_mid_stream(steady)
    fourth = Member(group, "d")
    _hard_round(steady, world, 3)
    wait_for(lambda: four_hard_rounds_joined(steady), timeout=120,
             what="the uninterrupted processor to join all four rounds")
    return fourth


def upgrade_mid_stream(steady: Env) -> None:
    """Version 3 of the deployment, valid from minute 35: the calls of hard rounds 2 and 3
    (one sent before it registers and one after) belong to it, whichever member reads them."""
    producer = kafka_io.producer(steady.config)
    key, value = sc.deployment_message(sc.deployment("prod/llama-3-1-8b", 3, T0 + dt.timedelta(minutes=35),
                                                     nim_release="1.10.0"))
    producer.send(steady.config.topics.deployments, key=key, value=value).get(30)
    producer.close()


def four_hard_rounds_joined(steady: Env) -> bool:
    """The uninterrupted processor's trail holds four hard rounds, every action joined and
    the upgrade's calls on version 3."""
    trail = audit_trail(steady)
    calls, actions = trail.of("model_call"), trail.of("tool_action")
    return (len(calls) == 12 and len(actions) == 12 and all(a["call_id"] for a in actions.values())
            and sum(c["deployment_version"] == 3 for c in calls.values()) == 6)


def _front_holds(env: Env, trail: Trail) -> bool:
    """The query front's calls page, and each call's trace-back, show the trail's calls and
    actions at their versions."""
    calls = {c["call_id"]: c for c in api_client.query(env.api, "calls", {"limit": 1000})["rows"]}
    if {k: c["version"] for k, c in calls.items()} != {k: r["version"] for k, r in trail.of("model_call").items()}:
        return False
    actions = {a["action_id"]: a["version"] for call_id in calls
               for a in api_client.query(env.api, "trace-back", {"call_id": call_id})["actions"]}
    return actions == {k: r["version"] for k, r in trail.of("tool_action").items()}


def _stored(env: Env) -> dict[tuple[str, str], int]:
    """(kind, key) -> version of every record in the shards' files, each checked to be in
    the shard its partition names (governance records: in every shard)."""
    partitions = len(kafka_io.partitions_of(kafka_io.consumer(env.config, group_id=None), env.config.topics.calls))
    found: dict[tuple[str, str], int] = {}
    for shard in (0, 1):
        path = Path(env.config.data_dir) / "shards" / f"{shard}-of-2" / "audit.duckdb"
        with duckdb.connect(str(path), read_only=True) as con:
            for kind, table in RECORD_TABLES.items():
                columns = ", ".join(records.KEYS[kind])
                for *key, version in con.execute(f"SELECT {columns}, version FROM {table}").fetchall():
                    joined = "|".join(str(k) for k in key)
                    if kind == "deployment":
                        assert found.setdefault((kind, joined), version) == version
                        continue
                    assert kafka_io.partition_of(joined, partitions) % 2 == shard, (kind, joined, shard)
                    assert (kind, joined) not in found
                    found[(kind, joined)] = version
    return found


def test_a_processor_stopped_cleanly_hands_the_input_over_without_waiting_out_its_session(
        tmp_path: Path, kafka_bootstrap: str):
    """Static members keep their input through a restart by not leaving the group; one that
    stops cleanly while it reads leaves, so the standby takes over long before the session
    (here 5 minutes) would have ended."""
    env = Env(tmp_path, kafka_bootstrap, processor={"session_timeout": "300s"})
    register_deployments(env)
    members = [Member(env, "a"), Member(env, "b")]
    try:
        first = wait_for(lambda: _one_active(members), timeout=90, what="one member reading, one standing by")
        first.process.terminate()
        assert first.process.wait(timeout=60) == 0
        second = wait_for(lambda: _one_active(members), timeout=120,
                          what="the standby to read the input well within the 300 s session")
        assert second is not first
        world = sc.World()
        ids = sc.agent_run(world, corpus.T0)
        producer = kafka_io.producer(env.config)
        producer.send(env.config.topics.otlp_spans, key=b"t", value=sc.World.otlp(world.take())).get(30)
        producer.close()
        wait_for(lambda: ids["call_id"] in {c["call_id"] for c in audit_trail(env).of("model_call").values()},
                 timeout=60, what="the call, joined by the member that took over")
    finally:
        env.stop_all()


def test_a_member_whose_changelog_another_wrote_writes_and_commits_nothing_more(tmp_path: Path,
                                                                               kafka_bootstrap: str):
    """A member paused past its session (a stopped VM, a long GC) resumes mid-batch while
    another member already holds the input and writes the state: the changelog's end moved,
    so it writes no state, commits no offset, and drops what it held."""
    from processors.chunks import chunk_key, encode_chunk
    from processors.loop import Processor

    env = Env(tmp_path, kafka_bootstrap)
    t = env.config.topics
    register_deployments(env)
    processor = Processor(env.config)
    try:
        producer = kafka_io.producer(env.config)
        world = sc.World()

        def spans() -> bytes:
            sc.agent_run(world, corpus.T0)
            return sc.World.otlp(world.take())

        # Settled in the group first: the processor has read and written the state once.
        producer.send(t.otlp_spans, key=b"t", value=spans()).get(30)
        ends = wait_for(lambda: processor.run_once(timeout_ms=100) is not None and processor.active
                        and len(processor.pipeline.joiner) and processor._state_ends,  # noqa: SLF001
                        timeout=60, what="the processor to read the input and write its state")
        assert ends == processor._changelog_ends()  # noqa: SLF001 - its own write is the end
        # What the member that took over writes (an empty chunk under a key of its own).
        producer.send(t.processor_state, key=chunk_key(10**9).encode(), value=encode_chunk({}), partition=0).get(30)
        producer.send(t.otlp_spans, key=b"t", value=spans()).get(30)
        producer.close()
        written = len(read_all(env, t.processor_state))
        wait_for(lambda: processor.run_once(timeout_ms=200) is not None and not processor.active, timeout=60,
                 what="the processor to find the changelog written by another member")
        assert len(processor.pipeline.joiner) == 0  # it holds nothing now
        assert len(read_all(env, t.processor_state)) == written  # and wrote nothing after the other
        committed = sum(processor.consumer.committed(tp) or 0
                        for tp in kafka_io.partitions_of(processor.offsets, t.otlp_spans))
        assert committed == 1  # the first message's offset; the second is read again by its owner
        assert b"nimtrail_processor_fenced_times_total 1.0" in processor.metrics.exposition()
    finally:
        processor.close()


def test_two_processors_given_one_instance_id_are_told_so(tmp_path: Path, kafka_bootstrap: str):
    """The group fences a member whose instance id a newer one took: the fenced one stops,
    saying why, instead of reading the input beside it."""
    env = Env(tmp_path, kafka_bootstrap)
    register_deployments(env)
    first = env.start("processor", log_name="first")
    try:
        env.wait_ready("processor")
        second = env.start("processor", args=("--ops", f"127.0.0.1:{free_port()}"), log_name="second")
        world = sc.World()
        producer = kafka_io.producer(env.config)

        def one_stopped() -> subprocess.Popen | None:
            sc.agent_run(world, corpus.T0)
            producer.send(env.config.topics.otlp_spans, key=b"t", value=sc.World.otlp(world.take())).get(30)
            return next((p for p in (first, second) if p.poll() is not None), None)

        stopped = wait_for(one_stopped, timeout=120, interval=1.0, what="one of the two to be fenced")
        producer.close()
        log = env.log("first" if stopped is first else "second")
        assert stopped.returncode != 0
        assert "with this one's instance id" in log and "give each its own (--instance-id)" in log, log[-3000:]
    finally:
        env.stop_all()
