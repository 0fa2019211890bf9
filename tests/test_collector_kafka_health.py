"""The collector's view of Kafka: the newest send with an outcome decides, so a late
outcome of an older send cannot flip it."""

from __future__ import annotations

from collector.kafka_health import KafkaHealth


def test_kafka_is_back_only_after_a_send_started_after_the_failure_is_acknowledged():
    health = KafkaHealth()
    assert health.up
    before_outage, during_outage = health.attempt(), health.attempt()
    assert health.failed(during_outage) and not health.up
    # Acknowledged late, but it started before the failure was seen: no proof Kafka is back.
    assert not health.acknowledged(before_outage) and not health.up
    probe = health.attempt()
    assert health.acknowledged(probe) and health.up
    assert not health.acknowledged(probe)  # no change, nothing to report twice


def test_an_old_send_failing_after_kafka_returned_does_not_mark_it_away():
    health = KafkaHealth()
    stuck = health.attempt()  # started during the outage, times out later
    assert health.failed(health.attempt())
    assert health.acknowledged(health.attempt())
    assert not health.failed(stuck) and health.up
