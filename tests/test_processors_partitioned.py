"""Processors sharing the join on the real broker (processor.partitions): every member
normalises and joins its share, SIGKILL of one hands its share to the others, and the
group's trail equals one uninterrupted processor's."""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path

import pytest

from nimtrail import kafka_io
from tests import scenarios as sc
from tests.corpus import T0
from tests.harness import scrape, wait_for
from tests.test_processors_kafka import audit_trail, beside, same_trail, start_steady
from tests.test_processors_standby import Member, _front_holds, _hard_round, _logs, _stored

pytestmark = pytest.mark.integration
CONSUMED = "nimtrail_processor_consumed_messages_total"


def _consumed(member: Member) -> float:
    """Input messages this member has read (raw and evidence), by its /metrics."""
    return sum(v for k, v in scrape(f"http://127.0.0.1:{member.port}/metrics").items() if k.startswith(CONSUMED))


def test_three_members_sharing_the_join_one_killed_and_a_fourth_started_emit_one_processors_trail(
        tmp_path: Path, kafka_bootstrap: str):
    """Three members share six evidence partitions; the world has NIM log lines for the
    traced calls (joined at each call's home), tool runs whose trace context broke (joined
    through the tool-call id's home) and a deployment upgraded mid-stream. One member is
    SIGKILLed mid-run and a fourth joins. Every member reads input; the group ends with
    exactly an uninterrupted processor's trail, record by record, and two warehouse shards
    store it."""
    steady, group = beside(tmp_path, kafka_bootstrap, session_timeout="6s", partitions=6, warehouse={"shards": 2})
    members: list[Member] = []
    try:
        start_steady(steady)
        for i in (0, 1):
            group.start("warehouse", args=("--shard", str(i)), log_name=f"warehouse-{i}")
        members += [Member(group, name) for name in ("a", "b", "c")]
        wait_for(lambda: all(m.active() == 1 for m in members), timeout=90,
                 what="each of three members to hold a share")
        world = sc.World()
        _hard_round(steady, world, 0)
        _hard_round(steady, world, 1)
        wait_for(lambda: len(audit_trail(group).of("model_call")) >= 6, timeout=90,
                 what="the group to write two rounds")
        killed = members[1]
        killed.process.send_signal(signal.SIGKILL)
        killed.process.wait()
        _hard_round(steady, world, 2)
        producer = kafka_io.producer(steady.config)
        key, value = sc.deployment_message(sc.deployment("prod/llama-3-1-8b", 3, T0 + dt.timedelta(minutes=35),
                                                         nim_release="1.10.0"))
        producer.send(steady.config.topics.deployments, key=key, value=value).get(30)
        producer.close()
        members.append(Member(group, "d"))
        _hard_round(steady, world, 3)

        def settled() -> bool:
            trail = audit_trail(steady)
            calls, actions = trail.of("model_call"), trail.of("tool_action")
            return (len(calls) == 12 and len(actions) == 12 and all(a["call_id"] for a in actions.values())
                    and sum(c["deployment_version"] == 3 for c in calls.values()) == 6)

        wait_for(settled, timeout=120, what="the uninterrupted processor to join all four rounds")
        # Versions included: a member restoring a partition marks its calls for every
        # deployment version, so none is rebuilt later where the steady one was not.
        final = same_trail(steady, group, None, "the group's trail to equal the uninterrupted processor's",
                           logs=lambda: _logs(group, members))
        assert all(_consumed(m) > 0 for m in members if m is not killed), "every member read a share of the input"
        calls = final.of("model_call").values()
        assert all(set(c["signals"]) >= {"log.nim", "span.client", "span.nim"} for c in calls)
        assert sorted(c["deployment_version"] for c in calls) == [1] * 6 + [3] * 6
        emitted = audit_trail(group)
        wait_for(lambda: _front_holds(group, emitted), timeout=60,
                 what="the warehouse shards to hold the group's calls and actions, each at its last version")
    finally:
        group.stop_all()
        steady.stop_all()
    assert _stored(group) == {key: record["version"] for key, record in emitted.kept.items()}
    doc = json.loads(group.cli("verify", "--json").stdout)
    assert doc["ok"], doc["problems"]
