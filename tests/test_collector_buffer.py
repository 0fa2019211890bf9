"""The on-disk buffer on its own: order, limits, surviving a reopen and a torn write."""

from __future__ import annotations

import uuid

import pytest

from collector.buffer import BufferFull, DiskBuffer, Entry


def _entries(n: int, size: int = 100, topic: str = "t") -> list[Entry]:
    return [Entry(topic, f"k{i}".encode(), bytes([i % 256]) * size, (("h", b"v"),)) for i in range(n)]


def test_entries_come_back_in_order_across_segments_and_reopen(tmp_path):
    buffer = DiskBuffer(tmp_path, max_bytes=1 << 20, segment_bytes=64 * 1024)
    written = _entries(2000)
    for i in range(0, 2000, 100):
        buffer.append(written[i:i + 100])
    assert len(list(tmp_path.glob("*.seg"))) > 1
    first = buffer.read(max_entries=700)
    assert [e for e, _ in first] == written[:700]
    buffer.commit(first[-1][1])
    buffer.close()

    reopened = DiskBuffer(tmp_path, max_bytes=1 << 20, segment_bytes=64 * 1024)
    rest = []
    while items := reopened.read(max_entries=333):
        rest += [e for e, _ in items]
        reopened.commit(items[-1][1])
    assert rest == written[700:]
    assert reopened.empty and reopened.used_bytes == 0
    assert len(list(tmp_path.glob("*.seg"))) == 1  # drained segments are deleted
    reopened.append([Entry("t", None, b"after")])
    assert [e.value for e, _ in reopened.read()] == [b"after"]


def test_full_buffer_refuses_and_accepts_again_after_draining(tmp_path):
    buffer = DiskBuffer(tmp_path, max_bytes=10_000)
    buffer.append(_entries(50))
    with pytest.raises(BufferFull):
        buffer.append(_entries(50))
    buffer.commit(buffer.read()[-1][1])
    buffer.append(_entries(50))
    assert len(buffer.read()) == 50


def test_a_torn_write_at_the_tail_is_cut_at_open(tmp_path):
    buffer = DiskBuffer(tmp_path, max_bytes=1 << 20)
    buffer.append(_entries(3))
    buffer.close()
    segment = next(tmp_path.glob("*.seg"))
    with open(segment, "ab") as f:
        f.write(_entries(1)[0].encode()[:37])  # a crash in the middle of an append
    reopened = DiskBuffer(tmp_path, max_bytes=1 << 20)
    assert [e for e, _ in reopened.read()] == _entries(3)
    reopened.append([Entry("t", None, b"next")])
    assert [e.value for e, _ in reopened.read()][-1] == b"next"


def test_drainer_sends_in_order_and_dead_letters_what_kafka_refuses_for_good(tmp_path, kafka_bootstrap):
    """A buffer left by a previous run drains on start; a message the topic can never take
    (over its max.message.bytes) goes to the dead-letter topic instead of blocking the rest,
    and the producer it broke is replaced so the next message still gets through."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from collector.forward import Forwarder
    from nimtrail import config as config_mod, kafka_io
    from nimtrail.ops import StageMetrics
    from tests.collector_support import TopicReader, headers
    from tests.harness import wait_for

    suffix = uuid.uuid4().hex[:8]
    small, dlq = f"buffer-small.{suffix}", f"buffer-dlq.{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "2048"})])
    admin.close()
    config = config_mod.load(env={"NIMTRAIL_KAFKA__BOOTSTRAP": kafka_bootstrap})
    kafka_io.ensure_topics(config, [small, dlq])

    buffer = DiskBuffer(tmp_path, max_bytes=1 << 20)
    buffer.append([Entry(small, b"k", b"first"), Entry(small, b"k", b"x" * 100_000), Entry(small, b"k", b"last")])
    buffer.close()
    forwarder = Forwarder(lambda: kafka_io.producer(config, compression_type=None),
                          DiskBuffer(tmp_path, max_bytes=1 << 20), StageMetrics("collector-test"), dlq_topic=dlq)
    assert forwarder.buffering  # what is on disk goes first
    forwarder.start()
    try:
        wait_for(lambda: not forwarder.buffering, timeout=60, what="the buffer to drain")
    finally:
        forwarder.close()
    delivered = TopicReader(kafka_bootstrap, small)
    assert [m.value for m in delivered.wait(lambda ms: len(ms) == 2 and ms)] == [b"first", b"last"]
    letters = TopicReader(kafka_bootstrap, dlq)
    letter = letters.wait(lambda ms: ms)[0]
    assert headers(letter)["nimtrail.reason"] == "kafka_refused" and letter.value == b"x" * 100_000
    delivered.close()
    letters.close()
