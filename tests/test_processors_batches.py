"""Audit batches are cut to fit a Kafka message."""

from nimtrail import columnar, records
from processors.loop import encode_batches


def _call(n: int, text: str = "") -> dict:
    return records.new("model_call", call_id=f"c{n}", version=1, prompt_sha256="ab" * 32, prompt_text=text or None)


def test_a_batch_too_large_for_one_message_is_split_without_losing_a_record():
    batch = [_call(n, "x" * 300) for n in range(40)]
    values, dropped = encode_batches("model_call", batch, limit=4000)
    assert len(values) > 1 and dropped == 0
    assert all(len(v) <= 4000 for v in values)
    decoded = [r for v in values for r in columnar.records_of(v)[1]]
    assert decoded == batch


def test_one_record_too_large_alone_keeps_its_hashes_and_loses_its_text():
    values, dropped = encode_batches("model_call", [_call(1, "x" * 10_000)], limit=4000)
    assert dropped == 1
    (record,) = columnar.records_of(values[0])[1]
    assert record["prompt_text"] is None and record["prompt_sha256"] == "ab" * 32


def test_a_columnar_batch_too_large_is_split_the_same_way():
    batch = [_call(n, "x" * 300) for n in range(4 * columnar.COLUMNAR_FROM)]
    values, dropped = encode_batches("model_call", batch, limit=100_000)
    assert len(values) > 1 and dropped == 0 and all(len(v) <= 100_000 for v in values)
    assert any(columnar.is_columnar(v) for v in values)
    assert [r for v in values for r in columnar.records_of(v)[1]] == batch
