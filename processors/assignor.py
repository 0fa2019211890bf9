"""Every input partition to one member of the processor group; the others stand by.

The join needs all of a call's evidence in one process, and the raw topics do not put it
in one partition (docs/scale.md says why, and what repartitioning would take). So the
group is used the way Kafka Streams uses standby replicas: one member is *active* and
reads every partition; any other member holds nothing and takes over — restoring the
join state from the changelog — when the group loses the active one (a crash, a node
gone, an upgrade). Kafka's group coordinator decides who is in the group; this assignor,
run by whichever member leads the rebalance, only decides who is active:

1. the member that says it was active in the last generation (its subscription's user
   data), so that a standby joining or leaving never moves the input — and the state —
   away from the process that holds it;
2. if none does (it died, or the group is new), the first by static instance id (then by
   member id), so that every leader picks the same one.
"""

from __future__ import annotations

from kafka.coordinator.assignors.abstract import (AbstractPartitionAssignor, ConsumerProtocolAssignment,
                                                  ConsumerProtocolSubscription)
from kafka.structs import TopicPartition

ACTIVE = b"active"


class ActiveStandbyAssignor(AbstractPartitionAssignor):
    name = "nimtrail-active-standby"
    version = 0

    def __init__(self) -> None:
        self.active = False  # this member held the input in the last generation

    def metadata(self, topics) -> ConsumerProtocolSubscription:
        return ConsumerProtocolSubscription(self.version, sorted(topics), ACTIVE if self.active else b"")

    def assign(self, cluster, members) -> dict[str, ConsumerProtocolAssignment]:
        chosen = choose_active([(m.member_id, m.group_instance_id, m.metadata.user_data == ACTIVE)
                                for m in members])
        topics = sorted({topic for m in members for topic in m.metadata.topics})
        partitions = [TopicPartition(topic, p) for topic in topics
                      for p in sorted(cluster.partitions_for_topic(topic) or ())]
        return {m.member_id: ConsumerProtocolAssignment(
                    self.version, _by_topic(partitions) if m.member_id == chosen else [], b"")
                for m in members}

    def on_assignment(self, assignment, generation) -> None:
        pass  # the processor's rebalance listener acts on the assignment


def choose_active(members: list[tuple[str, str | None, bool]]) -> str | None:
    """The member id to hand every partition to, of (member id, instance id, was active)."""
    if not members:
        return None
    order = sorted(members, key=lambda m: (not m[2], m[1] is None, m[1] or "", m[0]))
    return order[0][0]


def _by_topic(partitions: list[TopicPartition]) -> list[tuple[str, list[int]]]:
    grouped: dict[str, list[int]] = {}
    for tp in partitions:
        grouped.setdefault(tp.topic, []).append(tp.partition)
    return sorted(grouped.items())
