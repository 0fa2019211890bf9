"""The processor group's membership: every input partition to one member, the others
stand by; the assignment handed to the loop; the group's refusals in config terms.

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

import contextlib
from typing import Iterator

from kafka import ConsumerRebalanceListener
from kafka.coordinator.assignors.abstract import (AbstractPartitionAssignor, ConsumerProtocolAssignment,
                                                  ConsumerProtocolSubscription)
from kafka.errors import FencedInstanceIdError, InconsistentGroupProtocolError, InvalidSessionTimeoutError
from kafka.structs import TopicPartition

from nimtrail.config import ProcessorConfig
from nimtrail.errors import NimtrailError

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


class Handover(ConsumerRebalanceListener):
    """Keeps the group's latest decision for the loop to take after the poll that brought
    it (`take()`): kafka-python's clients share one network loop, which the listener runs
    inside, so the listener itself can ask Kafka nothing (a restore from here blocked)."""

    def __init__(self) -> None:
        self._handed: set[TopicPartition] | None = None

    def on_partitions_revoked(self, revoked) -> None:
        pass  # the state stays until the new assignment says whose it is

    def on_partitions_assigned(self, assigned) -> None:
        self._handed = set(assigned)

    @property
    def decided(self) -> bool:
        """Whether an assignment was given since the last take."""
        return self._handed is not None

    def take(self) -> set[TopicPartition] | None:
        """The assignment given since the last take, or None."""
        handed, self._handed = self._handed, None
        return handed


@contextlib.contextmanager
def group_errors(config: ProcessorConfig, instance_id: str) -> Iterator[None]:
    """The group's refusals that no retry mends, said in the terms of the configuration."""
    try:
        yield
    except FencedInstanceIdError as e:
        raise NimtrailError(
            f"Another processor joined {config.group_id} with this one's instance id {instance_id!r}: "
            f"give each its own (--instance-id) ({e})") from e
    except InconsistentGroupProtocolError as e:
        raise NimtrailError(
            f"Another member of {config.group_id} assigns partitions another way: a processor of an older "
            f"nimtrail, running or stopped less than its session timeout ago. Stop it, or wait that long ({e})"
        ) from e
    except InvalidSessionTimeoutError as e:
        raise NimtrailError(
            f"The broker refuses processor.session_timeout {config.session_timeout:g}s (its "
            "group.min.session.timeout.ms and group.max.session.timeout.ms bound it; 6s to 30min by "
            f"default) ({e})") from e
