"""The on-disk buffer on its own: order, limits, surviving a reopen and a torn write."""

from __future__ import annotations

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
