"""Processors sharing the join on the real broker (processor.partitions): every member
normalises and joins its share, SIGKILL of one hands its share to the others, and the
group's trail equals one uninterrupted processor's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import scenarios as sc
from tests.harness import scrape, wait_for
from tests.test_processors_kafka import audit_trail, beside, same_trail
from tests.test_processors_standby import (Member, _hard_round, _logs, front_shows_the_hard_rounds,
                                           kill_and_finish_the_hard_rounds, shards_hold_exactly,
                                           three_members_over_two_shards)

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
        members += three_members_over_two_shards(steady, group)
        wait_for(lambda: all(m.active() == 1 for m in members), timeout=90,
                 what="each of three members to hold a share")
        world = sc.World()
        _hard_round(steady, world, 0)
        _hard_round(steady, world, 1)
        wait_for(lambda: len(audit_trail(group).of("model_call")) >= 6, timeout=90,
                 what="the group to write two rounds")
        killed = members[1]
        members.append(kill_and_finish_the_hard_rounds(steady, group, world, killed))
        # Versions included: a member restoring a partition marks its calls for every
        # deployment version, so none is rebuilt later where the steady one was not.
        final = same_trail(steady, group, None, "the group's trail to equal the uninterrupted processor's",
                           logs=lambda: _logs(group, members), timeout=120)
        assert all(_consumed(m) > 0 for m in members if m is not killed), "every member read a share of the input"
        emitted = front_shows_the_hard_rounds(final, group)
    finally:
        group.stop_all()
        steady.stop_all()
    shards_hold_exactly(group, emitted)
