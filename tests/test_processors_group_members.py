"""Who the processor group hands the input to, and what the loop is handed (processors/membership.py): pure."""

from __future__ import annotations

from types import SimpleNamespace

from kafka.coordinator.assignors.abstract import ConsumerProtocolSubscription

from processors.membership import ACTIVE, ActiveStandbyAssignor, Handover, choose_active


class Cluster:
    def __init__(self, partitions: dict[str, int]):
        self.partitions = partitions

    def partitions_for_topic(self, topic: str):
        return set(range(self.partitions[topic])) if topic in self.partitions else None


def member(member_id: str, instance: str | None, active: bool, topics=("spans", "logs")):
    return SimpleNamespace(member_id=member_id, group_instance_id=instance,
                           metadata=ConsumerProtocolSubscription(0, list(topics), ACTIVE if active else b""))


def test_every_partition_goes_to_one_member_and_none_to_the_others():
    members = [member("m-2", "b", False), member("m-1", "a", False), member("m-3", "c", False)]
    assignment = ActiveStandbyAssignor().assign(Cluster({"spans": 3, "logs": 2}), members)
    assert [tp for tp in assignment["m-1"].partitions()] == [
        *(("logs", p) for p in range(2)), *(("spans", p) for p in range(3))]
    assert assignment["m-2"].partitions() == [] and assignment["m-3"].partitions() == []


def test_the_member_that_held_the_input_keeps_it_whoever_joins():
    # "c" held it; "a" sorts first but joining must not move the input (and its state).
    assert choose_active([("m-1", "a", False), ("m-3", "c", True)]) == "m-3"
    # Without the one that held it (it died), every leader picks the same: by instance id.
    assert choose_active([("m-9", "b", False), ("m-1", "a", False)]) == "m-1"
    # Static members before dynamic ones, which go by member id.
    assert choose_active([("m-0", None, False), ("m-5", "z", False)]) == "m-5"
    assert choose_active([("m-2", None, False), ("m-1", None, False)]) == "m-1"
    assert choose_active([]) is None


def test_a_member_says_whether_it_held_the_input():
    assignor = ActiveStandbyAssignor()
    assert assignor.metadata({"logs", "spans"}).user_data == b""
    assignor.active = True
    subscription = assignor.metadata({"spans", "logs"})
    assert subscription.user_data == ACTIVE and subscription.topics == ["logs", "spans"]


def test_a_topic_without_metadata_is_left_out_not_fatal():
    assignment = ActiveStandbyAssignor().assign(Cluster({"spans": 1}), [member("m-1", "a", False)])
    assert assignment["m-1"].partitions() == [("spans", 0)]


def test_the_loop_takes_each_decision_once():
    handover = Handover()
    assert handover.take() is None
    handover.on_partitions_revoked({("spans", 0)})
    handover.on_partitions_assigned([("spans", 0), ("logs", 1)])
    handover.on_partitions_assigned([])  # a second rebalance before the loop looked: the latest counts
    assert handover.take() == set()
    assert handover.take() is None
